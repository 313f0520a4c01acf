//! Sources: one folder per type, registered below (see `connectors/README.md`).

crate::registry::connectors! {
    parse_source => SourceConfig;
    #[cfg(feature = "files")] file::FileSourceConfig,
    #[cfg(feature = "files")] stdin::StdinSourceConfig,
    #[cfg(feature = "amqp")] amqp::AmqpSourceConfig,
    #[cfg(feature = "http")] http::HttpSourceConfig,
    #[cfg(feature = "kafka")] kafka::KafkaSourceConfig,
    #[cfg(feature = "mongodb")] mongodb::MongoSourceConfig,
}
