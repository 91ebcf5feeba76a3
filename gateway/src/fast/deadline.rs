//! A connection's reusable timeout: one timer armed in the runtime's wheel and
//! moved only when it fires early, instead of one timer armed and cancelled per
//! wait.
//!
//! A busy keep-alive connection waits twice per request (for the client's next
//! head and for the upstream's answer); `tokio_timeout` arms and cancels a
//! timer in the wheel each time (under the driver's lock). Here the timer keeps
//! its deadline across waits: when it fires, the current wait checks its own
//! deadline and, if that is still ahead, moves the timer there. The same limit
//! for every wait (a pool's read timeout, the keep-alive hold) means the timer
//! is re-armed at most once per limit, whatever the request rate.

use std::future::Future;
use std::pin::{pin, Pin};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

pub struct Deadline {
    sleep: Pin<Box<Sleep>>,
}

/// The wait took longer than its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl Deadline {
    pub fn new() -> Self {
        // Not in the wheel until first polled; then it fires and is moved to
        // the first wait's deadline.
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
        }
    }

    /// Runs `fut` until it completes or `limit` has passed from now.
    pub async fn within<F: Future>(
        &mut self,
        limit: Duration,
        fut: F,
    ) -> Result<F::Output, Elapsed> {
        let due = Instant::now() + limit;
        if self.sleep.deadline() > due {
            // A shorter limit than the last wait's: the timer must not fire late.
            self.sleep.as_mut().reset(due);
        }
        let mut fut = pin!(fut);
        loop {
            tokio::select! {
                biased;
                out = &mut fut => return Ok(out),
                () = self.sleep.as_mut() => {
                    if Instant::now() >= due {
                        return Err(Elapsed);
                    }
                    self.sleep.as_mut().reset(due);
                }
            }
        }
    }
}

impl Default for Deadline {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Bounds a wait that must end by itself well before this.
    async fn bounded<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(20), f)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn each_wait_gets_its_own_limit_whatever_came_before() {
        let mut d = Deadline::new();
        let done = tokio::time::sleep(Duration::from_millis(20));
        assert_eq!(
            bounded(d.within(Duration::from_secs(5), done)).await,
            Ok(())
        );
        // The timer points at the first wait's deadline (5 s out): a later wait
        // with a short limit must not wait for it.
        let never = std::future::pending::<()>();
        let r = bounded(d.within(Duration::from_millis(50), never)).await;
        assert_eq!(r, Err(Elapsed));
        // A wait whose future finishes after the timer's last deadline has
        // passed is not cut short by that old deadline.
        let done = tokio::time::sleep(Duration::from_millis(100));
        assert_eq!(
            bounded(d.within(Duration::from_secs(5), done)).await,
            Ok(())
        );
        let never = std::future::pending::<()>();
        let r = bounded(d.within(Duration::from_millis(30), never)).await;
        assert_eq!(r, Err(Elapsed));
    }

    #[tokio::test]
    async fn a_ready_future_is_answered_even_with_no_time_left() {
        let mut d = Deadline::new();
        for i in 0..1000u32 {
            assert_eq!(d.within(Duration::ZERO, async { i }).await, Ok(i));
        }
    }
}
