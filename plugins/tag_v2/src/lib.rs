//! `tag_v2`: prefixes each payload with `v2:`; see `tag_v1`.

const TAG: &str = "v2";
include!("../../tag_v1/src/tagger.rs");
