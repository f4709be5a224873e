//! Profilers and probes on text that updates patched (issue 19): with the
//! default writer, a page an update wrote still maps the program's file,
//! so `perf` symbolises the code on it and a uprobe placed through the file
//! keeps firing (a page that turned anonymous would lose both, and the
//! next hit of the uprobe's `int3` would kill the process with SIGTRAP).
//!
//! Each test needs something the machine may not offer (`perf` allowed to
//! sample this process; tracefs with uprobe events); where it is missing
//! the test prints why and passes without checking.
#![cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(feature = "force-generic")
))]

use std::hint::black_box;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static_call::static_call! {
    /// Called from an inline site inside `profiled_hot_loop`, so every
    /// update writes the page the hot function runs on.
    static HOT: extern "C" fn(u64) -> u64 = step_a;
}

extern "C" fn step_a(x: u64) -> u64 {
    x.wrapping_mul(3).wrapping_add(1)
}

extern "C" fn step_b(x: u64) -> u64 {
    x.wrapping_mul(5).wrapping_add(1)
}

/// The hot function: it spends its time on its own page, which holds the
/// key's site.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn profiled_hot_loop(n: u64) -> u64 {
    let mut x = black_box(1u64);
    for _ in 0..n {
        x = HOT.call_inline(x);
        for _ in 0..64 {
            x = black_box(x).rotate_left(7) ^ 0x9e37_79b9;
        }
    }
    x
}

/// The tests take turns: both update `HOT`.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `/proc/self/maps` line holding `addr`.
fn maps_line(addr: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .find(|l| {
            let (a, b) = l.split(' ').next().unwrap().split_once('-').unwrap();
            let a = usize::from_str_radix(a, 16).unwrap();
            let b = usize::from_str_radix(b, 16).unwrap();
            (a..b).contains(&addr)
        })
        .unwrap()
        .to_string()
}

/// The offset in its file of the code at `addr`, and the file.
fn file_offset(addr: usize) -> (String, u64) {
    let line = maps_line(addr);
    let mut f = line.split_whitespace();
    let start = usize::from_str_radix(f.next().unwrap().split('-').next().unwrap(), 16).unwrap();
    let offset = u64::from_str_radix(f.nth(1).unwrap(), 16).unwrap();
    let path = f.nth(2).unwrap_or("").to_string();
    (path, offset + (addr - start) as u64)
}

/// Runs the hot loop for `time`, updating `HOT` back and forth between
/// runs; how many updates were made.
fn run_and_update(time: Duration) -> usize {
    let start = Instant::now();
    let mut updates = 0;
    while start.elapsed() < time {
        black_box(profiled_hot_loop(black_box(2000)));
        let f: extern "C" fn(u64) -> u64 = if updates % 2 == 0 { step_b } else { step_a };
        HOT.update(f).unwrap();
        updates += 1;
    }
    updates
}

fn hot_page_maps_the_program() {
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let line = maps_line(profiled_hot_loop as extern "C" fn(u64) -> u64 as usize);
    assert!(
        line.ends_with(exe.to_str().unwrap()),
        "the hot function's page lost its file: {line}"
    );
}

#[test]
fn perf_symbolises_a_hot_function_on_a_patched_page() {
    let _serial = serial();
    if let Some(why) = emulated() {
        eprintln!("skipped: {why}");
        return;
    }
    let data = std::env::temp_dir().join(format!("static-call-perf-{}.data", std::process::id()));
    let pid = std::process::id().to_string();
    let spawned = Command::new("perf")
        .args([
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-F",
            "997",
            "-p",
            &pid,
            "-o",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let perf = match spawned {
        Ok(p) => p,
        Err(e) => {
            eprintln!("skipped: perf cannot be started: {e}");
            return;
        }
    };
    // Let perf attach (and record the mappings as they are) first.
    std::thread::sleep(Duration::from_millis(500));
    let updates = run_and_update(Duration::from_millis(1500));
    hot_page_maps_the_program();
    // SAFETY: sends SIGINT to the child we spawned, by its pid.
    unsafe { libc::kill(perf.id() as libc::pid_t, libc::SIGINT) };
    let out = perf.wait_with_output().unwrap();
    if !data.exists() {
        eprintln!(
            "skipped: perf recorded nothing ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return;
    }
    let report = Command::new("perf")
        .args(["report", "--stdio", "--no-children", "--sort", "sym", "-i"])
        .arg(&data)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&data);
    let text = String::from_utf8_lossy(&report.stdout);
    let hot: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("profiled_hot_loop"))
        .collect();
    eprintln!("perf, {updates} updates while recording: {hot:?}");
    if !report.status.success() {
        eprintln!(
            "skipped: perf report failed: {}",
            String::from_utf8_lossy(&report.stderr).trim()
        );
        return;
    }
    assert!(
        !hot.is_empty(),
        "perf did not attribute samples to the hot function (on a page updated {updates} \
         times):\n{text}"
    );
}

/// Why this program does not run natively, if it does not: under
/// qemu-user the kernel runs the emulator, not this program's
/// instructions (a uprobe's `int3` would be written into code the
/// emulator translates, and perf samples the emulator). The kernel's own
/// architecture (`/proc/sys/kernel/arch`, Linux 6.1) is one the emulator
/// does not rewrite.
fn emulated() -> Option<String> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/arch").ok()?;
    let kernel = kernel.trim();
    (kernel != std::env::consts::ARCH).then(|| {
        format!(
            "a {} program on a {kernel} kernel runs under an emulator",
            std::env::consts::ARCH
        )
    })
}

/// A tracefs with uprobe events, and this test's probe on it: removed
/// (and tracefs unmounted, if the test mounted it) when dropped, so a
/// failing test leaves nothing behind.
struct Tracefs {
    dir: std::path::PathBuf,
    mounted: bool,
    probe: Option<String>,
}

impl Tracefs {
    fn append(&self, name: &str, line: &str) -> std::io::Result<()> {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join(name))
            .and_then(|mut f| writeln!(f, "{line}"))
    }
}

impl Drop for Tracefs {
    fn drop(&mut self) {
        if let Some(event) = self.probe.take() {
            let enable = self
                .dir
                .join(format!("events/static_call_test/{event}/enable"));
            let _ = std::fs::write(enable, "0");
            let _ = self.append("uprobe_events", &format!("-:static_call_test/{event}"));
        }
        if self.mounted {
            // SAFETY: a NUL-terminated path; unmounts what this test mounted.
            unsafe { libc::umount(c"/sys/kernel/tracing".as_ptr()) };
        }
    }
}

/// The tracefs directory with uprobe events, or why there is none.
fn tracefs() -> Result<Tracefs, String> {
    for dir in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        let dir = std::path::PathBuf::from(dir);
        if dir.join("uprobe_events").exists() {
            return Ok(Tracefs {
                dir,
                mounted: false,
                probe: None,
            });
        }
    }
    // Not mounted (a fresh VM or container often has the directory but
    // not the file system): mount it where we may (root).
    let dir = std::path::PathBuf::from("/sys/kernel/tracing");
    // SAFETY: NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!(
            "no tracefs with uprobe_events is mounted, and mounting one failed: {e}"
        ));
    }
    let fs = Tracefs {
        dir,
        mounted: true,
        probe: None,
    };
    if fs.dir.join("uprobe_events").exists() {
        eprintln!("mounted tracefs at {}", fs.dir.display());
        Ok(fs)
    } else {
        Err("tracefs mounted, but this kernel has no uprobe events".into())
    }
}

#[test]
fn a_uprobe_on_a_patched_page_keeps_firing() {
    let _serial = serial();
    if let Some(why) = emulated() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut fs = match tracefs() {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let (file, offset) = file_offset(profiled_hot_loop as extern "C" fn(u64) -> u64 as usize);
    let event = format!("hot_{}", std::process::id());
    if let Err(e) = fs.append(
        "uprobe_events",
        &format!("p:static_call_test/{event} {file}:{offset:#x}"),
    ) {
        eprintln!("skipped: registering a uprobe failed: {e}");
        return;
    }
    fs.probe = Some(event.clone());
    let dir = fs.dir.clone();
    let enable = dir.join(format!("events/static_call_test/{event}/enable"));
    let hits = || -> u64 {
        let profile = std::fs::read_to_string(dir.join("uprobe_profile")).unwrap_or_default();
        profile
            .lines()
            .find(|l| l.contains(&event))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let result = std::fs::write(&enable, "1").map(|()| {
        // Hits before any update, then after each of several: the
        // process survives every one (an anonymous page would kill it).
        let calls = 50u64;
        for _ in 0..calls {
            black_box(profiled_hot_loop(1));
        }
        let before = hits();
        let updates = run_and_update(Duration::from_millis(200));
        hot_page_maps_the_program();
        for _ in 0..calls {
            black_box(profiled_hot_loop(1));
        }
        (before, hits(), updates, calls)
    });
    drop(fs);
    let (before, after, updates, calls) = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("skipped: enabling the uprobe failed: {e}");
            return;
        }
    };
    eprintln!("uprobe: {before} hits before {updates} updates, {after} after");
    assert!(
        before >= calls,
        "the uprobe fired {before} times for {calls} calls"
    );
    assert!(
        after >= before + calls,
        "after {updates} updates the uprobe fired {} times for {calls} calls",
        after - before
    );
}
