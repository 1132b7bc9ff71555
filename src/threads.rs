//! The core count, and a fallible map over a slice spread on scoped threads: what the
//! slide reader (a large region's JPEG tiles), the grader (a batch's grid tiles) and the
//! benchmarks share.

use std::sync::OnceLock;

/// This process's usable cores, asked once: `available_parallelism` reads cgroup files on
/// every call, which cost more than decoding when it ran for each grid tile.
pub fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// `f` of every item, in order, with the items split into up to `threads` contiguous runs,
/// each on its own scoped thread (on the calling thread when `threads` ≤ 1). The first
/// error wins; a thread that panicked gives `panicked()`.
pub fn map_in_order<T: Sync, U: Send, E: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> Result<U, E> + Sync,
    panicked: impl Fn() -> E,
) -> Result<Vec<U>, E> {
    if threads <= 1 || items.len() <= 1 {
        return items.iter().map(&f).collect();
    }
    let f = &f;
    std::thread::scope(|scope| {
        let runs: Vec<_> = items
            .chunks(items.len().div_ceil(threads))
            .map(|run| scope.spawn(move || run.iter().map(f).collect::<Result<Vec<_>, _>>()))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for run in runs {
            out.extend(run.join().map_err(|_| panicked())??);
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_mapped_on_threads_keep_their_order_and_errors() {
        let items: Vec<u8> = (0..23).collect();
        let ok = |i: &u8| Ok::<u8, String>(*i);
        for threads in [1, 2, 3, 8, 64] {
            let out = map_in_order(&items, threads, ok, || "panicked".to_string()).unwrap();
            assert_eq!(out, (0..23).collect::<Vec<u8>>(), "{threads} threads");
        }
        let failing = |i: &u8| {
            if *i == 17 {
                Err(format!("tile {i}"))
            } else {
                ok(i)
            }
        };
        let e = map_in_order(&items, 4, failing, || "panicked".to_string()).unwrap_err();
        assert!(e.contains("tile 17"), "{e}");
    }
}
