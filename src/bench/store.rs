//! Job-store throughput: how many jobs per second the store can hand out, on SQLite or on
//! PostgreSQL, with several claimers at once (as several workers and replicas would).
//! Each claimer loops over claim → finish, the two statements a worker spends per job.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::serve::jobs::store::{Insert, JobRequest, JobState, NewJob, Store, StoreLocation};

#[derive(Debug, clap::Args)]
pub struct StoreBenchArgs {
    /// PostgreSQL URL; without it, a SQLite store in a temporary folder. The database
    /// should be empty and throwaway: the bench fills and leaves its `jobs` table.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Jobs inserted, then claimed and finished.
    #[arg(long, default_value_t = 2000)]
    pub jobs: usize,
    /// Claimers at once (comma-separated list: one run per value).
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub claimers: Vec<usize>,
    /// Separate `Store` instances the claimers are spread over (replicas).
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
}

pub fn run(args: &StoreBenchArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("slidegrade-bench-store-{}", std::process::id()));
    let location = StoreLocation::new(&dir, args.database_url.as_deref())?;
    let result = measure(args, &location);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(args: &StoreBenchArgs, location: &StoreLocation) -> anyhow::Result<()> {
    let replicas: Vec<Arc<Store>> = (0..args.replicas.max(1))
        .map(|_| Store::open_at(location).map(Arc::new))
        .collect::<Result<_, _>>()?;
    println!("store: {location}, {} replicas", replicas.len());
    println!("| claimers | jobs | inserts/s | claims+finishes/s |");
    println!("|---|---|---|---|");
    for (round, &claimers) in args.claimers.iter().enumerate() {
        let inserted = Instant::now();
        let request = JobRequest::default();
        for i in 0..args.jobs {
            let id = format!("bench-{round}-{i}");
            let job = NewJob {
                id: &id,
                slide_path: Path::new("/bench.svs"),
                slide_name: "bench.svs",
                uploaded: false,
                request: &request,
                idempotency_key: None,
                request_hash: "",
                out_dir: Path::new("/bench-out"),
            };
            anyhow::ensure!(
                matches!(
                    replicas[i % replicas.len()].insert(&job)?,
                    Insert::Created(_)
                ),
                "insert {id} did not create a job"
            );
        }
        let insert_rate = args.jobs as f64 / inserted.elapsed().as_secs_f64();

        let claimed = Instant::now();
        let threads: Vec<_> = (0..claimers.max(1))
            .map(|c| {
                let store = replicas[c % replicas.len()].clone();
                std::thread::spawn(move || -> anyhow::Result<usize> {
                    let owner = format!("bench-claimer-{c}");
                    let mut n = 0;
                    while let Some(job) = store.claim_next(&owner, Duration::from_secs(60))? {
                        store.finish(&job.id, &owner, JobState::Done, None, &[])?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        let mut total = 0;
        for thread in threads {
            total += thread
                .join()
                .map_err(|_| anyhow::anyhow!("a claimer panicked"))??;
        }
        anyhow::ensure!(total == args.jobs, "claimed {total} of {} jobs", args.jobs);
        let claim_rate = total as f64 / claimed.elapsed().as_secs_f64();
        println!(
            "| {claimers} | {} | {insert_rate:.0} | {claim_rate:.0} |",
            args.jobs
        );
    }
    Ok(())
}
