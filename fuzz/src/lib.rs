//! Oracles shared by the fuzz targets.
#![forbid(unsafe_code)]

/// The protocol's one model (`tests/protocol-model`, also the oracle of
/// `tests/wire.rs`), its verdicts given as `ReqParser`'s so that the targets
/// compare them directly. The model itself shares no type with the server.
pub mod model {
    use conn_daemon::proto::parser::Verdict;

    pub use protocol_model::BUFFER;

    /// The model's verdict on `input`, the bytes a connection has read so far.
    pub fn verdict(input: &[u8]) -> Verdict {
        match protocol_model::verdict(input) {
            protocol_model::Verdict::Incomplete => Verdict::Incomplete,
            protocol_model::Verdict::Fast => Verdict::Fast,
            protocol_model::Verdict::Slow => Verdict::Slow,
            protocol_model::Verdict::Invalid => Verdict::Invalid,
            protocol_model::Verdict::TooLarge => Verdict::TooLarge,
        }
    }
}
