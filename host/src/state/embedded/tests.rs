use bytes::Bytes;

use super::*;
use crate::state::{Limits, Position, Store};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

fn batch(writes: &[(&str, Option<&str>)], applied: &[&str], position: Option<(&str, u64)>) -> CommitBatch {
    CommitBatch {
        writes: writes.iter().map(|(k, v)| (k.to_string(), v.map(|v| Bytes::copy_from_slice(v.as_bytes())))).collect(),
        applied: applied.iter().map(|s| s.to_string()).collect(),
        writers: Vec::new(),
        position: position.map(|(source, offset)| Position { source: source.into(), offset }),
    }
}

#[tokio::test]
async fn a_commit_survives_reopening_with_its_markers_and_position() -> Result {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("state").join("sluice.redb");
    {
        let db = EmbeddedDb::open(&path).await?;
        let backend = db.backend("orders", EmbeddedOptions::default());
        assert_eq!(backend.get("k").await?, None, "tables do not exist yet");
        assert!(!backend.was_applied("e1").await?);
        assert_eq!(backend.position("file").await?, None);
        assert!(backend.scan("", None, 10).await?.is_empty());
        backend.commit(batch(&[("k", Some("v")), ("gone", Some("x"))], &["e0"], None)).await?;
        backend.commit(batch(&[("gone", None), ("k2", Some("v2"))], &["e1", "e2"], Some(("file", 42)))).await?;
    }
    let db = EmbeddedDb::open(&path).await?;
    let backend = db.backend("orders", EmbeddedOptions::default());
    assert_eq!(backend.get("k").await?, Some(b"v".to_vec()));
    assert_eq!(backend.get("gone").await?, None);
    assert!(backend.was_applied("e1").await? && backend.was_applied("e2").await?);
    assert!(!backend.was_applied("e3").await?);
    assert_eq!(backend.position("file").await?, Some(42));

    let other = db.backend("payments", EmbeddedOptions::default());
    assert_eq!(other.get("k").await?, None, "each pipeline has its own namespace");
    assert!(!other.was_applied("e1").await?);
    assert_eq!(other.position("file").await?, None);
    Ok(())
}

#[tokio::test]
async fn scan_pages_by_prefix_in_key_order() -> Result {
    let dir = tempfile::tempdir()?;
    let db = EmbeddedDb::open(dir.path().join("s.redb")).await?;
    let backend = db.backend("p", EmbeddedOptions::default());
    backend
        .commit(batch(&[("a1", Some("1")), ("a2", Some("2")), ("a3", Some("3")), ("b1", Some("x")), ("", Some("e"))], &[], None))
        .await?;
    let keys = |page: Vec<(String, Vec<u8>)>| page.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(keys(backend.scan("a", None, 2).await?), ["a1", "a2"]);
    assert_eq!(keys(backend.scan("a", Some("a2"), 2).await?), ["a3"]);
    assert_eq!(keys(backend.scan("a", Some("0"), 1).await?), ["a1"], "an `after` before the prefix starts at the prefix");
    assert_eq!(keys(backend.scan("", None, 10).await?), ["", "a1", "a2", "a3", "b1"]);
    Ok(())
}

#[tokio::test]
async fn markers_live_one_to_two_retentions_in_generations() -> Result {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("m.redb");
    // Long enough that the restarted backend's commit below comes well
    // within it on a loaded machine.
    let retention = Duration::from_secs(1);
    let options = EmbeddedOptions { marker_retention: retention, ..EmbeddedOptions::default() };
    {
        let db = EmbeddedDb::open(&path).await?;
        let backend = db.backend("p", options.clone());
        backend.commit(batch(&[], &["old1", "old2"], None)).await?; // generation 0
        tokio::time::sleep(retention).await;
        backend.commit(batch(&[], &["new1"], None)).await?; // generation 1
        assert!(backend.was_applied("old1").await?, "the generation before the current one is kept");
        assert_eq!(backend.applied_among(&["old2", "new1", "never"]).await?, [true, true, false]);
        tokio::time::sleep(retention).await;
        backend.commit(batch(&[], &["new2"], None)).await?; // generation 2: 0 is dropped
        assert_eq!(backend.applied_among(&["old1", "old2", "new1", "new2"]).await?, [false, false, true, true]);
    }
    // A new backend (a restarted pipeline) finds the generation in the file:
    // its first commit, within the retention, does not rotate.
    let db = EmbeddedDb::open(&path).await?;
    let backend = db.backend("p", options);
    backend.commit(batch(&[], &["new3"], None)).await?;
    assert_eq!(backend.applied_among(&["new1", "new2", "new3"]).await?, [true, true, true]);
    Ok(())
}

/// Markers written before generations (`applied:<pipeline>`, keyed by
/// `&str`) are still answered, and dropped at the first rotation.
#[tokio::test]
async fn legacy_markers_count_until_the_first_rotation() -> Result {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("l.redb");
    {
        let db = redb::Database::create(&path)?;
        let txn = db.begin_write()?;
        {
            let mut applied = txn.open_table(TableDefinition::<&str, u64>::new("applied:p"))?;
            applied.insert("before-upgrade", 1)?;
            let mut at = txn.open_table(TableDefinition::<(u64, &str), ()>::new("applied_at:p"))?;
            at.insert((1, "before-upgrade"), ())?;
        }
        txn.commit()?;
    }
    let retention = Duration::from_millis(300);
    let db = EmbeddedDb::open(&path).await?;
    let backend = db.backend("p", EmbeddedOptions { marker_retention: retention, ..EmbeddedOptions::default() });
    assert!(backend.was_applied("before-upgrade").await?, "answered before any commit");
    backend.commit(batch(&[], &["after"], None)).await?;
    assert_eq!(backend.applied_among(&["before-upgrade", "after"]).await?, [true, true]);
    tokio::time::sleep(retention).await;
    backend.commit(batch(&[], &[], None)).await?;
    assert_eq!(backend.applied_among(&["before-upgrade", "after"]).await?, [false, true]);
    Ok(())
}

#[tokio::test]
async fn after_abort_a_fresh_store_over_the_database_sees_only_committed_values() -> Result {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("a.redb");
    {
        let db = EmbeddedDb::open(&path).await?;
        let store = Store::new(Arc::new(db.backend("p", EmbeddedOptions::default())), Limits::default());
        let mut a = store.begin("a".into());
        a.increment("n", 1).await?;
        let mut t = store.conclude(a)?;
        t.set_position("file", 1);
        store.ready(t).await?;
        let mut b = store.begin("b".into());
        assert_eq!(b.increment("n", 1).await?, 2);
        let t_b = store.conclude(b)?;
        let mut c = store.begin("c".into());
        assert_eq!(c.get("n").await?, Some(b"2".to_vec()), "pending is visible before abort");
        drop(c);
        store.abort().await;
        assert!(store.ready(t_b).await.is_err());
        let fresh = Store::new(Arc::new(db.backend("p", EmbeddedOptions::default())), Limits::default());
        let mut d = fresh.begin("d".into());
        assert_eq!(d.get("n").await?, Some(b"1".to_vec()));
    }
    let db = EmbeddedDb::open(&path).await?;
    let store = Store::new(Arc::new(db.backend("p", EmbeddedOptions::default())), Limits::default());
    assert_eq!(store.get("n").await?, Some(b"1".to_vec()));
    assert!(store.was_applied("a").await? && !store.was_applied("b").await?);
    assert_eq!(store.position("file").await?, Some(1), "the position was committed with the state");
    Ok(())
}

#[tokio::test]
async fn a_second_open_of_the_same_file_is_refused_with_its_path() -> Result {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("x.redb");
    let _db = EmbeddedDb::open(&path).await?;
    let Err(error) = EmbeddedDb::open(&path).await else {
        return Err("redb allows one open per file".into());
    };
    assert!(error.to_string().contains("x.redb"), "{error}");
    Ok(())
}

#[tokio::test]
async fn deferred_sync_commits_are_visible_at_once_and_flushed_on_demand() -> Result {
    let dir = tempfile::tempdir()?;
    let db = EmbeddedDb::open(dir.path().join("s.redb")).await?;
    let options = EmbeddedOptions { sync_interval: Duration::from_secs(3600), ..EmbeddedOptions::default() };
    let backend = db.backend("p", options);
    backend.commit(batch(&[("k", Some("v"))], &["in:1"], Some(("in", 1)))).await?;
    assert_eq!(backend.get("k").await?, Some(b"v".to_vec()));
    assert_eq!(backend.position("in").await?, Some(1));
    assert!(backend.was_applied("in:1").await?);
    assert!(backend.unsynced.load(Ordering::Acquire), "not fsynced yet");
    backend.flush().await?;
    assert!(!backend.unsynced.load(Ordering::Acquire), "flush made it durable");
    Ok(())
}

#[tokio::test]
async fn the_read_cache_follows_commits_and_stays_within_its_budget() -> Result {
    let dir = tempfile::tempdir()?;
    let db = EmbeddedDb::open(dir.path().join("c.redb")).await?;
    // Room for about two 4-byte entries: older ones are read from the file.
    let backend = db.backend("p", EmbeddedOptions { cache_bytes: 10, ..EmbeddedOptions::default() });
    backend.commit(batch(&[("k1", Some("v1")), ("k2", Some("v2")), ("k3", Some("v3"))], &["e1"], None)).await?;
    backend.commit(batch(&[("k2", None), ("k3", Some("v3b"))], &["e2"], None)).await?;
    assert!(backend.cache.lock().map(|c| c.bytes <= 10).unwrap_or(false), "over budget");
    assert_eq!(backend.get("k1").await?, Some(b"v1".to_vec()), "evicted: from the file");
    assert_eq!(backend.get("k2").await?, None, "a delete is cached as absent");
    assert_eq!(backend.get("k3").await?, Some(b"v3b".to_vec()), "the newest commit wins");
    Ok(())
}
