//! Slide decoding in a child process, so that a crash in OpenSlide or its C codecs
//! (libtiff, libjpeg, OpenJPEG, libdicom...) on a malformed or malicious file kills a
//! throw-away process instead of the server with every request and job in it.
//!
//! What runs in the child is the [`probe`]: open the slide, plan an overview, and decode
//! the first tile of the finest and of the coarsest level. That is the part of a slide a
//! server decodes on behalf of an untrusted client before anything else (the header, the
//! directory, one tile at each end of the pyramid), and where format parsers fail. The
//! server runs it at submission and again before a job decodes the slide in-process,
//! so a file that crashes the decoder there is refused with `decoder_crashed`.
//! RELIABILITY.md has the measurements behind this choice.
//!
//! Protocol: the parent runs `<exe> probe-slide PATH [--mpp X]` (a hidden subcommand of
//! the `slidegrade` binary). The child prints the slide's properties as JSON and exits 0,
//! or prints a serialised [`SlideError`] and exits with [`EXIT_SLIDE_ERROR`]. Any other
//! end (a signal, another exit code, the time limit) is [`SlideError::DecoderCrashed`].

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{Result, Slide, SlideError, SlideProperties};

/// Name of the hidden subcommand that runs [`probe`] in a child process.
pub const PROBE_SUBCOMMAND: &str = "probe-slide";

/// Exit code of a child that reports a [`SlideError`] on stdout (not 1, which is any
/// other CLI failure, nor 101, a Rust panic).
pub const EXIT_SLIDE_ERROR: u8 = 3;

/// Longer side of the overview the probe plans (not reads), in pixels.
pub const PROBE_OVERVIEW_SIDE: u32 = 1024;

/// Side of the probe's first level-0 tile read, in pixels.
pub const PROBE_TILE_SIDE: u32 = 256;

/// Opens the slide, checks that an overview of the whole slide (≤
/// [`PROBE_OVERVIEW_SIDE`] px) fits the read budget, and decodes one tile
/// ([`PROBE_TILE_SIDE`] px) at the top left of the finest and of the coarsest level: the
/// header, the directory and both ends of the pyramid, at a cost that does not grow with
/// the slide. Runs in the calling process; [`Decoder::probe`] runs it in a child.
pub fn probe(path: &Path, mpp_override: Option<f64>) -> Result<SlideProperties> {
    let slide = Slide::open(path, mpp_override)?;
    let props = slide.properties().clone();
    let (w, h) = slide.dimensions();
    let extent_um = (f64::from(w) * props.mpp_x).max(f64::from(h) * props.mpp_y);
    // Capped below MAX_MPP: a header claiming metres of tissue must meet the pixel budget
    // (`no_pyramid`), not the µm/px sanity check (found by fuzzing).
    let overview_mpp = (extent_um / f64::from(PROBE_OVERVIEW_SIDE))
        .max(props.mpp_x.max(props.mpp_y))
        .min(super::MAX_MPP / 2.0);
    slide.plan_overview(overview_mpp)?;
    let side = PROBE_TILE_SIDE.min(w).min(h).max(1);
    let coarsest = props.levels.last().map_or(1.0, |l| l.downsample);
    for mpp in [props.mpp_x, props.mpp_x * coarsest] {
        slide.read_region_at_mpp(0, 0, side, side, mpp)?;
    }
    Ok(props)
}

/// The child's side of the protocol: runs [`probe`] and reports on stdout.
pub fn child_main(path: &Path, mpp_override: Option<f64>) -> ExitCode {
    let (text, code) = match probe(path, mpp_override) {
        Ok(props) => (serde_json::to_string(&props), ExitCode::SUCCESS),
        Err(e) => (serde_json::to_string(&e), ExitCode::from(EXIT_SLIDE_ERROR)),
    };
    match text {
        Ok(text) => {
            println!("{text}");
            code
        }
        Err(_) => ExitCode::FAILURE,
    }
}

/// How to run the decoder in a child process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoder {
    /// The `slidegrade` binary (the server's own executable).
    pub exe: PathBuf,
    /// A child still running after this long is killed and the slide refused: a file that
    /// makes a decoder loop forever must not hold a worker forever.
    pub timeout: Duration,
}

impl Decoder {
    /// The default time limit of a probe.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

    /// This process's own executable as the decoder (what `slidegrade serve` uses).
    pub fn current_exe() -> std::io::Result<Decoder> {
        Ok(Decoder {
            exe: std::env::current_exe()?,
            timeout: Self::DEFAULT_TIMEOUT,
        })
    }

    /// Runs [`probe`] on `path` in a child process. The slide's own errors come back as
    /// the same [`SlideError`]; a child that dies, exits oddly or overruns the time limit
    /// gives [`SlideError::DecoderCrashed`].
    pub fn probe(&self, path: &Path, mpp_override: Option<f64>) -> Result<()> {
        if !path.exists() {
            return Err(SlideError::NotFound(path.to_path_buf()));
        }
        let mut command = Command::new(&self.exe);
        command
            .arg(PROBE_SUBCOMMAND)
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(mpp) = mpp_override {
            command.arg("--mpp").arg(mpp.to_string());
        }
        let mut child = spawn(&mut command)
            .map_err(|e| SlideError::DecoderUnavailable(format!("{}: {e}", self.exe.display())))?;
        // Drain both pipes on threads so that a chatty child cannot block on a full pipe
        // while this thread waits for it to exit.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_end(&mut bytes);
                }
                bytes
            })
        };
        let stdout = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );

        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(SlideError::DecoderUnavailable(e.to_string()));
                }
            }
        };
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        let crashed = |how: String| {
            let last_line = String::from_utf8_lossy(&stderr)
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| format!(" (last output: {})", l.trim()))
                .unwrap_or_default();
            tracing::warn!(path = %path.display(), how = %how, "slide decoder child failed");
            SlideError::DecoderCrashed {
                path: path.to_path_buf(),
                detail: format!("{how}{last_line}"),
            }
        };
        let Some(status) = status else {
            return Err(crashed(format!(
                "it did not finish within {} s and was killed",
                self.timeout.as_secs()
            )));
        };
        match status.code() {
            Some(0) => Ok(()),
            Some(code) if code == i32::from(EXIT_SLIDE_ERROR) => {
                match serde_json::from_slice::<SlideError>(&stdout) {
                    Ok(e) => Err(e),
                    Err(_) => Err(crashed(format!(
                        "it exited with status {code} without a readable error"
                    ))),
                }
            }
            _ => Err(crashed(describe(status))),
        }
    }
}

/// Spawns `command`, retrying briefly on ETXTBSY: a fork in another thread can hold a
/// just-written executable open for writing until its exec (seen with freshly written
/// decoder scripts in tests, and possible while a binary is being replaced).
fn spawn(command: &mut Command) -> std::io::Result<std::process::Child> {
    const ETXTBSY: i32 = 26;
    let mut tries = 0;
    loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// "killed by signal 11 (SIGSEGV)", or "exited with status 101".
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.signal(), status.code()) {
        (Some(signal), _) => {
            let name = match signal {
                4 => " (SIGILL)",
                6 => " (SIGABRT)",
                7 => " (SIGBUS)",
                8 => " (SIGFPE)",
                9 => " (SIGKILL: out of memory?)",
                11 => " (SIGSEGV)",
                _ => "",
            };
            format!("it was killed by signal {signal}{name}")
        }
        (None, Some(code)) => format!("it exited with status {code}"),
        (None, None) => "it ended without an exit status".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in decoder: a shell script with the given body.
    fn fake_decoder(dir: &Path, body: &str, timeout: Duration) -> Decoder {
        let exe = dir.join("decoder.sh");
        std::fs::write(&exe, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        Decoder { exe, timeout }
    }

    fn slide_file(dir: &Path) -> PathBuf {
        let path = dir.join("a.svs");
        std::fs::write(&path, b"x").unwrap();
        path
    }

    #[test]
    fn a_child_killed_by_a_signal_is_a_decoder_crash() {
        let dir = tempfile::tempdir().unwrap();
        let decoder = fake_decoder(
            dir.path(),
            "echo 'decoding tile 3' >&2; kill -SEGV $$",
            Duration::from_secs(30),
        );
        let err = decoder.probe(&slide_file(dir.path()), None).unwrap_err();
        assert_eq!(err.kind(), "decoder_crashed");
        let msg = err.to_string();
        assert!(
            msg.contains("signal 11 (SIGSEGV)") && msg.contains("decoding tile 3"),
            "{msg}"
        );
    }

    #[test]
    fn a_child_that_hangs_is_killed_at_the_time_limit() {
        let dir = tempfile::tempdir().unwrap();
        let decoder = fake_decoder(dir.path(), "exec sleep 30", Duration::from_millis(200));
        let err = decoder.probe(&slide_file(dir.path()), None).unwrap_err();
        assert_eq!(err.kind(), "decoder_crashed");
        assert!(err.to_string().contains("did not finish"), "{err}");
    }

    #[test]
    fn a_slide_error_crosses_the_process_boundary_intact() {
        let dir = tempfile::tempdir().unwrap();
        let reported = serde_json::to_string(&SlideError::MissingMpp {
            path: PathBuf::from("/x/a.svs"),
        })
        .unwrap();
        let decoder = fake_decoder(
            dir.path(),
            &format!("echo '{reported}'; exit {EXIT_SLIDE_ERROR}"),
            Duration::from_secs(30),
        );
        let err = decoder.probe(&slide_file(dir.path()), None).unwrap_err();
        assert!(matches!(err, SlideError::MissingMpp { .. }), "{err}");

        let ok = fake_decoder(dir.path(), "exit 0", Duration::from_secs(30));
        ok.probe(&slide_file(dir.path()), None).unwrap();
    }

    #[test]
    fn a_missing_decoder_is_a_server_problem() {
        let dir = tempfile::tempdir().unwrap();
        let decoder = Decoder {
            exe: dir.path().join("no-such-binary"),
            timeout: Duration::from_secs(1),
        };
        let err = decoder.probe(&slide_file(dir.path()), None).unwrap_err();
        assert_eq!(err.kind(), "decoder_unavailable");
    }
}
