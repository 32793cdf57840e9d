//! Start-up, readiness and drain by ownership: every request in flight holds a token of one
//! [`TaskTracker`], so drain is `close()` + `wait()`, and a request whose client went away (its
//! future dropped mid-`await`) gives its token back by being dropped. Readiness is published on a
//! `watch` channel, so whoever mirrors it (gRPC health) waits for changes instead of polling.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};

pub struct Lifecycle {
    in_flight: TaskTracker,
    draining: watch::Sender<bool>,
}

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
        Ok(self.in_flight.token())
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
}
