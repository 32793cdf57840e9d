//! Start-up, readiness and drain by ownership: every request in flight holds a token of one
//! [`TaskTracker`], so drain is `close()` + `wait()`, and a request whose client went away (its
//! future dropped mid-`await`) gives its token back by being dropped. Readiness is published on a
//! `watch` channel, so whoever mirrors it (gRPC health) waits for changes instead of polling.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};

pub struct Lifecycle {
    in_flight: TaskTracker,
    draining: watch::Sender<bool>,
    /// When a request last arrived while another was in flight (µs after `born`, to within 1 ms).
    last_company_us: AtomicU64,
    born: Instant,
    /// `--reply-spin-us`: see [`Lifecycle::reply_spin`].
    reply_spin: Duration,
}

/// How long the server must have seen no concurrent requests before a lone request polls for its
/// answer.
const REPLY_SPIN_QUIET: Duration = Duration::from_millis(10);

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    pub fn new() -> Self {
        Lifecycle {
            in_flight: TaskTracker::new(),
            draining: watch::channel(false).0,
            last_company_us: AtomicU64::new(0),
            born: Instant::now(),
            reply_spin: Duration::ZERO,
        }
    }

    /// Lets a request that is alone poll for its answer for up to `spin` (`--reply-spin-us`).
    pub fn with_reply_spin(mut self, spin: Duration) -> Self {
        self.reply_spin = spin;
        self
    }

    /// How long a request admitted now should poll for the engine's answer before it parks: the
    /// configured spin while the traffic is one request at a time, else 0. With concurrent
    /// requests (now, or within the last 10 ms) the other requests' tasks keep the tokio workers
    /// awake, and the polling would only take their CPU (measured: −9% req/s at c=4 when only
    /// "alone now" was asked; BENCHMARKS.md, "Reply spin").
    pub fn reply_spin(&self) -> Duration {
        if self.alone_lately(REPLY_SPIN_QUIET) {
            self.reply_spin
        } else {
            Duration::ZERO
        }
    }

    /// Admits one request: the token counts it as in flight until it is dropped, however the
    /// request ends (answered, failed, or abandoned by its client).
    pub fn admit(&self) -> Result<TaskTrackerToken> {
        if self.is_draining() {
            return Err(Error::Unavailable(
                "server is shutting down; retry on another replica".into(),
            ));
        }
        let token = self.in_flight.token();
        if self.in_flight.len() > 1 {
            // 0 means never: a first company within a microsecond of start is stored as 1.
            // Written at most once a millisecond, so concurrent traffic does not make every
            // request write the same cache line.
            let now = self.micros_now().max(1);
            let last = self.last_company_us.load(Ordering::Relaxed);
            if last == 0 || now.saturating_sub(last) >= 1000 {
                self.last_company_us.store(now, Ordering::Relaxed);
            }
        }
        Ok(token)
    }

    fn micros_now(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// No other request in flight now.
    pub fn alone(&self) -> bool {
        self.in_flight.len() <= 1
    }

    /// No other request in flight now, and none arrived while another was in flight for `quiet`:
    /// the traffic is one request at a time (c=1), not a gap in concurrent traffic.
    fn alone_lately(&self, quiet: Duration) -> bool {
        let last = self.last_company_us.load(Ordering::Relaxed);
        self.alone()
            && (last == 0 || self.micros_now().saturating_sub(last) >= quiet.as_micros() as u64)
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Draining as it changes (false, then true once).
    pub fn watch_draining(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Refuses new requests, then waits up to `timeout` for those in flight; returns how many were
    /// still running when the wait ended (0 when all finished).
    pub async fn drain(&self, timeout: Duration) -> usize {
        self.draining.send_replace(true);
        self.in_flight.close();
        let _ = tokio::time::timeout(timeout, self.in_flight.wait()).await;
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dropped_request_future_leaves_nothing_in_flight() {
        let life = Lifecycle::new();
        let request = {
            let token = life.admit().expect("admitted");
            async move {
                let _token = token;
                std::future::pending::<()>().await;
            }
        };
        let handle = tokio::spawn(request);
        tokio::task::yield_now().await;
        assert_eq!(life.in_flight(), 1);
        // What hyper does when the client resets the connection: the handler future is dropped.
        handle.abort();
        let _ = handle.await;
        let left = life.drain(Duration::from_secs(5)).await;
        assert_eq!(left, 0, "drain must not wait for an abandoned request");
        assert!(life.admit().is_err(), "no admission while draining");
    }

    #[tokio::test]
    async fn drain_waits_for_a_running_request_and_reports_what_is_left() {
        let life = Lifecycle::new();
        let token = life.admit().expect("admitted");
        let left = life.drain(Duration::from_millis(50)).await;
        assert_eq!(left, 1);
        drop(token);
        assert_eq!(life.drain(Duration::from_millis(50)).await, 0);
    }

    #[test]
    fn one_request_at_a_time_is_told_from_a_gap_in_concurrent_traffic() {
        let life = Lifecycle::new();
        let quiet = Duration::from_millis(20);
        let a = life.admit().expect("admitted");
        assert!(
            life.alone() && life.alone_lately(quiet),
            "the first request is alone"
        );
        drop(a);
        let a = life.admit().expect("admitted");
        assert!(
            life.alone_lately(quiet),
            "one after another is still one at a time"
        );
        let b = life.admit().expect("admitted");
        assert!(!life.alone() && !life.alone_lately(quiet));
        drop(a);
        // b is alone now, but the traffic was concurrent a moment ago.
        assert!(life.alone(), "in flight: {}", life.in_flight());
        assert!(!life.alone_lately(quiet));
        drop(b);
        std::thread::sleep(quiet + Duration::from_millis(5));
        let c = life.admit().expect("admitted");
        assert!(life.alone_lately(quiet), "quiet again after {quiet:?}");
        drop(c);
    }

    #[test]
    fn the_reply_spin_is_given_only_to_one_request_at_a_time() {
        let spin = Duration::from_micros(700);
        let life = Lifecycle::new().with_reply_spin(spin);
        let a = life.admit().expect("admitted");
        assert_eq!(life.reply_spin(), spin);
        let b = life.admit().expect("admitted");
        assert_eq!(life.reply_spin(), Duration::ZERO);
        drop(a);
        assert_eq!(life.reply_spin(), Duration::ZERO, "company a moment ago");
        drop(b);
        assert_eq!(
            Lifecycle::new().reply_spin(),
            Duration::ZERO,
            "off unless configured"
        );
    }
}
