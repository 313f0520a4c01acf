//! AMQP integration tests (being written).
