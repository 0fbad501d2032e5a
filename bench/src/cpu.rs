//! CPU time from `/proc`: what a write costs the database server (the shared, scarce resource)
//! and the client, independent of how busy the rest of the machine is.
//!
//! The server's CPU is the postmaster's own time, the time of the children it has reaped (its
//! `cutime`/`cstime`: backends that exited during a round, e.g. pgbench's), and the time of its
//! live children (backends, the WAL writer, the checkpointer …). A round's cost is the
//! difference of two readings. Only measurable when the server runs on this machine.

use std::path::Path;

/// CPU seconds, read twice around a round.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct CpuTime {
    /// The database server's processes.
    pub server: f64,
    /// This process (the benchmark's client side).
    pub client: f64,
}

impl std::ops::Sub for CpuTime {
    type Output = CpuTime;

    fn sub(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            server: self.server - earlier.server,
            client: self.client - earlier.client,
        }
    }
}

/// Reads the CPU time of one PostgreSQL server and of this process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuMeter {
    postmaster: u32,
    ticks_per_second: f64,
}

impl CpuMeter {
    /// The meter of the server that runs the backend `backend_pid` (`pg_backend_pid()` of any
    /// connection); `None` when that process is not on this machine.
    pub(crate) fn for_backend(backend_pid: i32) -> Option<Self> {
        let backend = u32::try_from(backend_pid).ok()?;
        let stat = ProcStat::read(Path::new(&format!("/proc/{backend}/stat")))?;
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (ticks > 0).then_some(Self {
            postmaster: stat.parent,
            ticks_per_second: ticks as f64,
        })
    }

    /// How many processes the server runs besides the postmaster (backends, background
    /// workers).
    pub(crate) fn children(&self) -> usize {
        self.live_children().count()
    }

    /// The server's processes other than the postmaster, as they are now.
    fn live_children(&self) -> impl Iterator<Item = ProcStat> + '_ {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(move |entry| {
                let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
                let stat = ProcStat::read(&entry.path().join("stat"))?;
                (stat.parent == self.postmaster && pid != self.postmaster).then_some(stat)
            })
    }

    /// Waits (up to `deadline`) until the server runs no more than `children` processes again:
    /// the backends of clients that disconnected have exited and been reaped, so that their
    /// CPU time is in the postmaster's reaped-children counters. Read before that, a backend
    /// still exiting lands in the next round's reading instead.
    pub(crate) async fn settle(&self, children: usize, deadline: std::time::Duration) {
        let until = std::time::Instant::now() + deadline;
        while self.children() > children && std::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// The CPU seconds used so far by the server and by this process.
    pub(crate) fn read(&self) -> CpuTime {
        let mut ticks = 0u64;
        if let Some(postmaster) =
            ProcStat::read(Path::new(&format!("/proc/{}/stat", self.postmaster)))
        {
            ticks += postmaster.own + postmaster.reaped_children;
        }
        ticks += self.live_children().map(|stat| stat.own).sum::<u64>();
        let client = ProcStat::read(Path::new("/proc/self/stat")).map_or(0, |s| s.own);
        CpuTime {
            server: ticks as f64 / self.ticks_per_second,
            client: client as f64 / self.ticks_per_second,
        }
    }
}

/// The fields of `/proc/<pid>/stat` we need.
#[derive(Debug, PartialEq)]
struct ProcStat {
    parent: u32,
    /// utime + stime, in clock ticks.
    own: u64,
    /// cutime + cstime: children waited for.
    reaped_children: u64,
}

impl ProcStat {
    fn read(path: &Path) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(path).ok()?)
    }

    /// Parses `pid (comm) state ppid …`; `comm` may hold spaces and parentheses, so the fields
    /// are counted from the last `)`.
    fn parse(text: &str) -> Option<Self> {
        let (_, rest) = text.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After comm: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
        let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
        Some(Self {
            parent: u32::try_from(number(1)?).ok()?,
            own: number(11)? + number(12)?,
            reaped_children: number(13)? + number(14)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_a_tricky_command_name_parses() {
        let line = "4242 (postgres: bench (x) INSERT) S 4000 4000 4000 0 -1 4194560 \
                    120 0 0 0 350 25 7 3 20 0 1 0 123 1000 50 18446744073709551615";
        assert_eq!(
            ProcStat::parse(line),
            Some(ProcStat {
                parent: 4000,
                own: 375,
                reaped_children: 10
            })
        );
        assert_eq!(ProcStat::parse("garbage"), None);
    }

    #[test]
    fn this_process_uses_cpu_and_the_meter_sees_it() {
        let me = std::process::id() as i32;
        // Our own parent stands in for a postmaster: its children include us.
        let meter = CpuMeter::for_backend(me).expect("/proc is readable");
        let before = meter.read();
        // Spin until the meter has seen 50 ms of our CPU (however busy the machine is), or
        // give up after 30 s.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut spin = 0u64;
        while std::time::Instant::now() < deadline && (meter.read() - before).client < 0.05 {
            for _ in 0..100_000 {
                spin = std::hint::black_box(spin.wrapping_add(1));
            }
        }
        let used = meter.read() - before;
        assert!(used.client >= 0.05, "{used:?}");
        assert!(used.server >= used.client * 0.9, "{used:?}");
    }
}
