//! Active-check thresholds: how consecutive probe results move an endpoint
//! between up and down. Pure: results go in, verdict changes come out.

/// What active health checks say about an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Usable: it passed (or has no checks).
    Up,
    /// Not usable: it failed `unhealthy_threshold` probes in a row (or its
    /// first one), and needs `healthy_threshold` passes in a row.
    Down,
    /// Not usable yet: it joined a serving service at run time and waits for
    /// one passed probe.
    Pending,
}

impl Verdict {
    /// The name used in /config and logs.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Up => "up",
            Verdict::Down => "down",
            Verdict::Pending => "pending",
        }
    }
}

/// How many probes in a row must agree to change the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Passes in a row that turn `Down` into `Up`.
    pub healthy: u32,
    /// Failures in a row that turn `Up` into `Down`.
    pub unhealthy: u32,
}

/// A verdict and the streak of results that disagree with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    verdict: Verdict,
    streak: u32,
}

impl Tally {
    /// Starts from `verdict` with no streak.
    pub fn new(verdict: Verdict) -> Tally {
        Tally { verdict, streak: 0 }
    }

    /// The current verdict.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// Counts one probe result and returns the new verdict when it changes.
    /// A result that agrees with the verdict clears the streak, so only
    /// results in a row count. A pending endpoint is decided by its first
    /// probe: up on a pass, down (like any failed endpoint) on a failure.
    pub fn observe(&mut self, passed: bool, thresholds: Thresholds) -> Option<Verdict> {
        let (next, needed) = match (self.verdict, passed) {
            (Verdict::Pending, true) => (Verdict::Up, 1),
            (Verdict::Pending, false) => (Verdict::Down, 1),
            (Verdict::Up, false) => (Verdict::Down, thresholds.unhealthy),
            (Verdict::Down, true) => (Verdict::Up, thresholds.healthy),
            (Verdict::Up, true) | (Verdict::Down, false) => {
                self.streak = 0;
                return None;
            }
        };
        self.streak += 1;
        if self.streak < needed {
            return None;
        }
        *self = Tally::new(next);
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        healthy: 2,
        unhealthy: 3,
    };

    fn feed(tally: &mut Tally, results: &str) -> Vec<Option<Verdict>> {
        results
            .chars()
            .map(|c| tally.observe(c == '+', T))
            .collect()
    }

    #[test]
    fn it_should_mark_an_up_endpoint_down_after_unhealthy_threshold_failures_in_a_row() {
        let mut tally = Tally::new(Verdict::Up);
        assert_eq!(
            feed(&mut tally, "--+---"),
            [None, None, None, None, None, Some(Verdict::Down)]
        );
        assert_eq!(tally.verdict(), Verdict::Down);
    }

    #[test]
    fn it_should_mark_a_down_endpoint_up_after_healthy_threshold_passes_in_a_row() {
        let mut tally = Tally::new(Verdict::Down);
        assert_eq!(
            feed(&mut tally, "+-++"),
            [None, None, None, Some(Verdict::Up)]
        );
        // Once up, a single failure is not enough.
        assert_eq!(feed(&mut tally, "-+"), [None, None]);
        assert_eq!(tally.verdict(), Verdict::Up);
    }

    #[test]
    fn it_should_decide_a_pending_endpoint_on_its_first_probe() {
        let mut up = Tally::new(Verdict::Pending);
        assert_eq!(up.observe(true, T), Some(Verdict::Up));
        let mut down = Tally::new(Verdict::Pending);
        assert_eq!(down.observe(false, T), Some(Verdict::Down));
        // After a failed first probe it needs the full healthy_threshold.
        assert_eq!(feed(&mut down, "++"), [None, Some(Verdict::Up)]);
    }

    #[test]
    fn it_should_flip_on_every_result_with_thresholds_of_one() {
        let one = Thresholds {
            healthy: 1,
            unhealthy: 1,
        };
        let mut tally = Tally::new(Verdict::Up);
        assert_eq!(tally.observe(false, one), Some(Verdict::Down));
        assert_eq!(tally.observe(true, one), Some(Verdict::Up));
        assert_eq!(tally.observe(true, one), None);
    }

    /// Random result sequences: the verdict changes only after exactly the
    /// threshold of agreeing results in a row.
    #[test]
    fn it_should_only_change_after_a_full_streak_for_random_sequences() {
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..200 {
            let t = Thresholds {
                healthy: rng.u32(1..=5),
                unhealthy: rng.u32(1..=5),
            };
            let mut tally = Tally::new(Verdict::Up);
            let mut history: Vec<bool> = Vec::new();
            for _ in 0..100 {
                let passed = rng.bool();
                let before = tally.verdict();
                history.push(passed);
                let changed = tally.observe(passed, t);
                let needed = if before == Verdict::Up {
                    t.unhealthy
                } else {
                    t.healthy
                };
                let run = history.iter().rev().take_while(|&&p| p == passed).count() as u32;
                if let Some(next) = changed {
                    assert_ne!(next, before);
                    assert!(run >= needed, "{history:?}");
                    history.clear();
                } else if (before == Verdict::Up) != passed {
                    assert!(run < needed, "{history:?}");
                }
            }
        }
    }
}
