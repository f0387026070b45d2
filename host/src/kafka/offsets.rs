//! Which offsets of each assigned partition are done, and what may be
//! committed: the lowest offset still outstanding, or one past the last
//! handed out when nothing is. Offsets are tracked as handed out rather than
//! counted, because a partition's offsets have gaps (compaction, transaction
//! markers) that a counter would wait on forever.
//!
//! Each assignment of a partition gets a new generation. An event handed out
//! before a partition was revoked settles against a generation that is gone
//! and changes nothing: the partition's next owner starts from the committed
//! offset and handles that event again (at-least-once).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// A topic and partition.
pub type TopicPartition = (Arc<str>, i32);

#[derive(Debug, Default)]
pub struct Tracker {
    partitions: HashMap<TopicPartition, Track>,
    /// Interned topic names, so a message's topic is not copied per event.
    topics: HashMap<String, Arc<str>>,
    /// Dispatcher partition numbers: one per topic and partition, stable for
    /// the life of the source.
    lanes: HashMap<TopicPartition, u32>,
    generation: u64,
    /// Events handed out and not yet settled, over all partitions.
    outstanding: usize,
}

#[derive(Debug)]
struct Track {
    generation: u64,
    outstanding: BTreeSet<i64>,
    /// Abandoned offsets: settled, not done; the commit point stays below them.
    held: BTreeSet<i64>,
    /// One past the last offset handed out.
    next: i64,
    /// The last commit point committed (or sent to a transaction).
    committed: Option<i64>,
}

impl Track {
    fn commit_point(&self) -> i64 {
        let lowest = |set: &BTreeSet<i64>| set.first().copied().unwrap_or(self.next);
        lowest(&self.outstanding).min(lowest(&self.held))
    }
}

/// What an event needs to settle itself.
#[derive(Debug, Clone)]
pub struct Position {
    pub partition: TopicPartition,
    pub offset: i64,
    pub generation: u64,
}

impl Tracker {
    /// Records that `offset` was handed out; returns its position and the
    /// dispatcher partition number.
    pub fn handed_out(&mut self, topic: &str, partition: i32, offset: i64) -> (Position, u32) {
        let topic = match self.topics.get(topic) {
            Some(interned) => interned.clone(),
            None => {
                let interned: Arc<str> = Arc::from(topic);
                self.topics.insert(topic.to_owned(), interned.clone());
                interned
            }
        };
        let key = (topic, partition);
        let lanes = self.lanes.len() as u32;
        let lane = *self.lanes.entry(key.clone()).or_insert(lanes);
        let generation = self.generation;
        let track = self.partitions.entry(key.clone()).or_insert_with(|| Track {
            generation,
            outstanding: BTreeSet::new(),
            held: BTreeSet::new(),
            next: offset,
            committed: None,
        });
        track.outstanding.insert(offset);
        track.next = track.next.max(offset + 1);
        self.outstanding += 1;
        (Position { partition: key, offset, generation: track.generation }, lane)
    }

    /// Marks a position done. A position of a revoked assignment is ignored.
    pub fn done(&mut self, position: &Position) {
        self.forget(position);
    }

    /// A settled position that is not done (abandoned): it no longer counts
    /// as in flight, but the commit point stays below it, so it is delivered
    /// again after a restart or rebalance.
    pub fn abandoned(&mut self, position: &Position) {
        if let Some(track) = self.partitions.get_mut(&position.partition) {
            if track.generation == position.generation && track.outstanding.remove(&position.offset) {
                track.held.insert(position.offset);
                self.outstanding = self.outstanding.saturating_sub(1);
            }
        }
    }

    fn forget(&mut self, position: &Position) {
        if let Some(track) = self.partitions.get_mut(&position.partition) {
            if track.generation == position.generation && track.outstanding.remove(&position.offset) {
                self.outstanding = self.outstanding.saturating_sub(1);
            }
        }
    }

    /// Events handed out and not settled.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Commit points that moved since they were last committed.
    pub fn uncommitted(&self) -> Vec<(TopicPartition, i64)> {
        self.partitions
            .iter()
            .filter(|(_, t)| t.committed != Some(t.commit_point()))
            .map(|(tp, t)| (tp.clone(), t.commit_point()))
            .collect()
    }

    /// Every tracked partition's commit point (a transaction sends them all).
    pub fn commit_points(&self) -> Vec<(TopicPartition, i64)> {
        self.partitions.iter().map(|(tp, t)| (tp.clone(), t.commit_point())).collect()
    }

    /// Records that these commit points are committed.
    pub fn committed(&mut self, points: &[(TopicPartition, i64)]) {
        for (tp, offset) in points {
            if let Some(track) = self.partitions.get_mut(tp) {
                track.committed = Some(*offset);
            }
        }
    }

    /// Events of `partitions` handed out and not yet done.
    pub fn outstanding_in(&self, partitions: &[(String, i32)]) -> usize {
        partitions
            .iter()
            .filter_map(|(topic, p)| self.partitions.iter().find(|((t, q), _)| &**t == topic && q == p))
            .map(|(_, track)| track.outstanding.len())
            .sum()
    }

    /// Commit points of `partitions`, which are being revoked; forgets them,
    /// so events of theirs still in flight no longer count.
    pub fn revoke(&mut self, partitions: &[(String, i32)]) -> Vec<(TopicPartition, i64)> {
        self.generation += 1;
        let mut points = Vec::new();
        self.partitions.retain(|(topic, p), track| {
            let revoked = partitions.iter().any(|(t, q)| &**topic == t && q == p);
            if revoked {
                if track.committed != Some(track.commit_point()) {
                    points.push(((topic.clone(), *p), track.commit_point()));
                }
                self.outstanding = self.outstanding.saturating_sub(track.outstanding.len());
            }
            !revoked
        });
        points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_point_is_the_lowest_outstanding_offset() {
        let mut t = Tracker::default();
        let (a, lane_a) = t.handed_out("orders", 0, 10);
        let (b, _) = t.handed_out("orders", 0, 11);
        // A gap (a transaction marker at 12) must not hold the commit point.
        let (c, _) = t.handed_out("orders", 0, 13);
        let (other, lane_other) = t.handed_out("orders", 1, 5);
        assert_ne!(lane_a, lane_other);
        t.done(&b);
        t.done(&c);
        assert_eq!(t.uncommitted().iter().find(|(tp, _)| tp.1 == 0).map(|p| p.1), Some(10));
        t.done(&a);
        let points = t.uncommitted();
        assert!(points.contains(&((Arc::from("orders"), 0), 14)), "{points:?}");
        assert!(points.contains(&((Arc::from("orders"), 1), 5)), "{points:?}");
        t.committed(&points);
        assert!(t.uncommitted().is_empty());
        assert_eq!(t.outstanding(), 1);
        t.done(&other);
        assert_eq!(t.outstanding(), 0);
        assert_eq!(t.uncommitted(), vec![((Arc::from("orders"), 1), 6)]);
    }

    #[test]
    fn an_abandoned_offset_holds_the_commit_point() {
        let mut t = Tracker::default();
        let (a, _) = t.handed_out("t", 0, 0);
        let (b, _) = t.handed_out("t", 0, 1);
        t.abandoned(&a);
        t.done(&b);
        assert_eq!(t.outstanding(), 0);
        assert_eq!(t.uncommitted(), vec![((Arc::from("t"), 0), 0)]);
    }

    #[test]
    fn settling_after_a_revoke_changes_nothing() {
        let mut t = Tracker::default();
        let (a, _) = t.handed_out("t", 0, 7);
        let points = t.revoke(&[("t".into(), 0)]);
        assert_eq!(points, vec![((Arc::from("t"), 0), 7)]);
        assert_eq!(t.outstanding(), 0);
        // Reassigned: the new owner starts again at the committed offset.
        let (again, _) = t.handed_out("t", 0, 7);
        t.done(&a);
        assert_eq!(t.outstanding(), 1, "the old generation's ack must not settle the new delivery");
        t.done(&again);
        assert_eq!(t.uncommitted(), vec![((Arc::from("t"), 0), 8)]);
    }
}
