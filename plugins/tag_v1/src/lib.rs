//! `tag_v1`: prefixes each payload with `v1:`. Hot-reload tests swap it with
//! `tag_v2` (the same handler, tag `v2:`) while events flow.

const TAG: &str = "v1";
include!("tagger.rs");
