//! The one loop of the polled sources (Azure Scheduled Events, the legacy Azure maintenance
//! endpoint, Azure Resource Health, AWS IMDS, the GCP metadata server).
//!
//! A source says how to do one round ([`Poll::round`]: fetch, hand the payloads to the run
//! loop, and say how long to wait before the next round); [`run`] does the rest, the same for
//! every source: a round that succeeds marks the source's health channel ok and forgets the
//! failures; one that fails is counted, logged on the first failure of a streak, and waits
//! [`Backoff::next`] (exponential with equal jitter, at least the server's `Retry-After`);
//! the loop ends when the host stops (during a round or a pause) or the run loop is gone.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

use super::{Deliver, Failure};
use crate::run::backoff::Backoff;
use crate::run::Host;

/// Why a round did not succeed.
#[derive(Debug)]
pub enum Halt {
    /// It failed: the reason (escaped before it is logged) and the server's `Retry-After`.
    Failed(Failure),
    /// The run loop is gone: the host is stopping.
    Closed,
}

impl Halt {
    /// The same, its reason prefixed with `what: ` (the path or key that failed).
    pub fn within(self, what: &str) -> Halt {
        match self {
            Halt::Failed((why, ra)) => Halt::Failed((format!("{what}: {why}"), ra)),
            Halt::Closed => Halt::Closed,
        }
    }
}

impl From<Failure> for Halt {
    fn from(f: Failure) -> Halt {
        Halt::Failed(f)
    }
}

impl From<Deliver> for Halt {
    /// A payload the normalizer rejected fails the round; a closed run loop ends it.
    fn from(d: Deliver) -> Halt {
        match d {
            Deliver::Rejected(why) => Halt::Failed((why, None)),
            Deliver::Closed => Halt::Closed,
        }
    }
}

/// One polled source: its protocol, and the state it keeps between rounds.
pub trait Poll {
    /// One round: the requests, each payload handed to the run loop. On success, how long to
    /// wait before the next round (the interval; zero when the request itself waited for a
    /// change, as the GCP metadata server's hanging GET does).
    fn round(&mut self) -> impl Future<Output = Result<Duration, Halt>> + Send;
}

/// Sleeps for `d`; false when the host is stopping.
pub async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        r = stop.changed() => r.is_ok() && !*stop.borrow(),
    }
}

/// Runs `poller`'s rounds until the host stops, reporting each on the health channel
/// `channel` of `source`, and backing off with `backoff` after a failure.
pub async fn run<P: Poll>(
    host: &Host,
    source: &'static str,
    channel: &'static str,
    mut backoff: Backoff,
    mut poller: P,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let started = std::time::Instant::now();
        let res = tokio::select! {
            r = poller.round() => r,
            _ = stop.changed() => return,
        };
        host.metrics.observe(
            "keel_poll_duration_seconds",
            &[("source", source)],
            started.elapsed().as_secs_f64(),
        );
        let wait = match res {
            Ok(pace) => {
                backoff.reset();
                host.source_ok(source, channel);
                pace
            }
            Err(Halt::Failed((why, ra))) => {
                host.source_failed(source, channel, &why);
                backoff.next(ra)
            }
            Err(Halt::Closed) => return,
        };
        if !wait.is_zero() && !pause(wait, &mut stop).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::path::Path;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    /// A host on the standard policies, with a state database in `dir`.
    fn host(dir: &Path) -> Result<Arc<Host>, Box<dyn std::error::Error>> {
        let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/standard");
        let path = dir.join("keel.yaml");
        std::fs::write(
            &path,
            format!("policies: {}\nstate: state.db\n", policies.display()),
        )?;
        let cfg = crate::config::load(&path).map_err(|e| format!("{e:?}"))?;
        Ok(Host::new(cfg, Box::new(std::io::sink()))?)
    }

    /// Plays back scripted outcomes; `None` is a round that never ends.
    struct Script(VecDeque<Option<Result<Duration, Halt>>>, Arc<AtomicU32>);

    impl Poll for Script {
        async fn round(&mut self) -> Result<Duration, Halt> {
            self.1.fetch_add(1, Ordering::SeqCst);
            match self.0.pop_front() {
                Some(Some(r)) => r,
                _ => std::future::pending().await,
            }
        }
    }

    const SOURCE: &str = "test.poll";

    #[tokio::test]
    async fn failures_back_off_and_count_a_success_resets_and_a_closed_loop_ends(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let host = host(dir.path())?;
        host.health.register(SOURCE, "poll");
        let rounds = Arc::new(AtomicU32::new(0));
        let failed = || Some(Err(Halt::Failed(("boom".into(), None))));
        let script = Script(
            [
                failed(),
                Some(Err(
                    Halt::from(Deliver::Rejected("bad".into())).within("path")
                )),
                Some(Ok(Duration::ZERO)),
                failed(),
                Some(Ok(Duration::from_millis(1))),
                Some(Err(Halt::Closed)),
            ]
            .into(),
            rounds.clone(),
        );
        let (_tx, stop) = watch::channel(false);
        let backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(2));
        tokio::time::timeout(
            Duration::from_secs(30),
            run(&host, SOURCE, "poll", backoff, script, stop),
        )
        .await?;
        // Every round ran, up to the closed run loop; the loop ended there.
        assert_eq!(rounds.load(Ordering::SeqCst), 6);
        assert_eq!(
            host.metrics
                .get("keel_source_errors_total", &[("source", SOURCE)]),
            3.0
        );
        // The last round that ran to its end succeeded: the source is ready again.
        let (ready, report) = host.health.readiness(Duration::from_secs(60));
        assert!(ready, "{report}");
        Ok(())
    }

    #[tokio::test]
    async fn the_loop_stops_during_a_round_and_during_a_pause(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let host = host(dir.path())?;
        host.health.register(SOURCE, "poll");
        for script in [
            // A round that never ends.
            vec![None],
            // A success, then a pause of an hour.
            vec![Some(Ok(Duration::from_secs(3_600)))],
            // A failure, then a backoff of an hour.
            vec![Some(Err(Halt::Failed(("boom".into(), None))))],
        ] {
            let rounds = Arc::new(AtomicU32::new(0));
            let script = Script(script.into(), rounds.clone());
            let (tx, stop) = watch::channel(false);
            let backoff = Backoff::new(Duration::from_secs(3_600), Duration::from_secs(3_600));
            let host2 = host.clone();
            let task = tokio::spawn(async move {
                run(&host2, SOURCE, "poll", backoff, script, stop).await;
            });
            // Wait until the first round has started, then stop the host.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while rounds.load(Ordering::SeqCst) == 0 {
                assert!(tokio::time::Instant::now() < deadline, "no round started");
                tokio::task::yield_now().await;
            }
            tx.send(true)?;
            tokio::time::timeout(Duration::from_secs(30), task).await??;
            assert_eq!(rounds.load(Ordering::SeqCst), 1);
        }
        Ok(())
    }
}
