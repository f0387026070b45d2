//! `wrong_world`: not a Sluice plugin. A valid component that exports
//! `greet` from the `test:other` world (see `wit/other.wit`) instead of the
//! `sluice:plugin` handler, so the host's tests can check that loading it
//! fails with a clear error rather than a trap at the first event.
//!
//! Config: none (it has no `init`).

wit_bindgen::generate!({
    path: "wit",
    world: "other",
});

struct Other;

impl Guest for Other {
    fn greet() -> String {
        "hello from the wrong world".to_owned()
    }
}

export!(Other);
