use super::source::{decode_position, encode_position};

#[test]
fn positions_round_trip() {
    let p = encode_position("part-0001.ndjson", 123_456);
    assert_eq!(
        decode_position(&p),
        Some(("part-0001.ndjson".to_string(), 123_456))
    );
    assert_eq!(decode_position(b"short"), None);
}

#[test]
fn example_config_parses() {
    let c: super::FileSourceConfig =
        toml::from_str("path = \"examples/data/weather.ndjson\"\nfollow = false").unwrap();
    assert!(!c.follow);
    assert_eq!(c.read_bytes, 256 << 10);
    let e = toml::from_str::<super::FileSourceConfig>("path = \"x\"\nfolow = true").unwrap_err();
    assert!(e.to_string().contains("unknown field `folow`"));
}
