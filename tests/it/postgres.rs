//! A throwaway PostgreSQL cluster from Debian's `postgresql` package (which `make test`
//! installs): `initdb` in a temporary folder, a server listening only on a Unix socket in
//! that folder, stopped and removed on drop. PostgreSQL refuses to run as root, so under
//! root (CI, containers) the cluster runs as the package's `postgres` user.

use std::path::PathBuf;
use std::process::Command;

pub struct TempPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
    /// `postgresql://…` for the cluster's `postgres` database.
    pub url: String,
}

/// The newest installed server's binaries: `initdb` on PATH, or Debian's
/// `/usr/lib/postgresql/<major>/bin`.
fn server_bin_dir() -> PathBuf {
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").is_file())
        .max_by_key(|p| {
            p.parent()
                .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
                .unwrap_or(0)
        });
    debian.unwrap_or_else(|| {
        panic!("PostgreSQL's server binaries (initdb, pg_ctl) are not installed: run `make test`, which installs Debian's `postgresql`")
    })
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl TempPostgres {
    pub fn start() -> TempPostgres {
        let bin = server_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("slidegrade-pg-")
            .tempdir()
            .expect("temp dir");
        let as_postgres = running_as_root();
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:", &dir.path().display().to_string()])
                .status()
                .expect("chown");
            assert!(
                status.success(),
                "cannot hand {} to postgres",
                dir.path().display()
            );
        }
        let pg = TempPostgres {
            url: format!(
                "postgresql://slidegrade@{}/postgres",
                dir.path().display().to_string().replace('/', "%2F")
            ),
            dir,
            bin,
            as_postgres,
        };
        let data = pg.data_dir();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "slidegrade",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        );
        // Socket only (no TCP port to collide with other tests); fsync off: throwaway.
        let options = format!(
            "-k {} -c listen_addresses='' -p 5432 -c fsync=off -c max_connections=200",
            pg.dir.path().display()
        );
        let log = pg.dir.path().join("server.log").display().to_string();
        pg.run(
            "pg_ctl",
            &[
                "-D", &data, "-w", "-t", "60", "-l", &log, "-o", &options, "start",
            ],
        );
        pg
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// `program` from the server's binaries, as the user the cluster runs as.
    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(exe);
            command
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let output = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = self
            .command("pg_ctl")
            .args(["-D", data.as_str(), "-m", "immediate", "-w", "stop"])
            .output();
    }
}
