//! Tracks which positions of a partition are done and yields the commit
//! point: the position below which everything is done, even when events
//! finish out of order (parallel lanes, retries). Kafka offsets and file line
//! numbers both commit this way.

use std::collections::BTreeSet;

#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Every position below this is done.
    committed: u64,
    /// Done positions at or above `committed`, waiting for a gap to fill.
    done_ahead: BTreeSet<u64>,
}

impl Progress {
    /// Starts with everything below `start` already done.
    pub fn starting_at(start: u64) -> Self {
        Self { committed: start, done_ahead: BTreeSet::new() }
    }

    /// Marks `position` done; returns the new commit point if it moved.
    pub fn done(&mut self, position: u64) -> Option<u64> {
        if position < self.committed {
            return None;
        }
        self.done_ahead.insert(position);
        let before = self.committed;
        while self.done_ahead.remove(&self.committed) {
            self.committed += 1;
        }
        (self.committed != before).then_some(self.committed)
    }

    /// Everything below this position is done.
    pub fn committed(&self) -> u64 {
        self.committed
    }
}

#[cfg(test)]
mod tests {
    use super::Progress;

    #[test]
    fn commit_point_waits_for_gaps() {
        let mut p = Progress::starting_at(10);
        assert_eq!(p.done(11), None);
        assert_eq!(p.done(12), None);
        assert_eq!(p.done(10), Some(13));
        assert_eq!(p.done(9), None, "positions below the start are ignored");
        assert_eq!(p.done(14), None);
        assert_eq!(p.committed(), 13);
        assert_eq!(p.done(13), Some(15));
    }
}
