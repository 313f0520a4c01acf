//! The fenced sinks (Redis, PostgreSQL, MongoDB) under one scenario
//! (tests/fenced_sinks/mod.rs): W1 counts per country and per 1-minute
//! window (plus a `messages:total` key in Redis, and the raw events
//! appended by id in PostgreSQL and MongoDB) must equal the oracle exactly
//! after a straight run, and after the pipeline was killed with SIGKILL at
//! random points while input kept arriving and the destination was down
//! for a while in the middle (the pipeline keeps running and retries).
//!
//! Redis and PostgreSQL run the real binary against real servers (the
//! shared ones of `tests/services.sh` for the straight run, private ones
//! that the outage stops). MongoDB runs in process over the connector's
//! fake server: see tests/fenced_sinks/mongodb.rs for what that covers.

mod fenced_sinks;
mod support;

use fenced_sinks::{kills_and_outage, straight_run, EVENTS, PACE};
use support::{rng, w1};

#[cfg(feature = "redis")]
#[test]
fn redis_counts_are_exact_after_sigkills_and_an_outage() {
    use fenced_sinks::process::{Process, Server};
    use fenced_sinks::redis::Redis;
    use support::services::PrivateRedis;
    let test = "redis_counts_are_exact_after_sigkills_and_an_outage";
    let mut rng = rng(test);
    let w1 = w1::generate(EVENTS, 5);
    let shared = Server::Shared(support::services::redis_url());
    straight_run(
        &mut Process::new(Redis::new("straight", shared), &w1, 0),
        &w1,
    );
    let private = Server::Private(PrivateRedis::start());
    let mut target = Process::new(Redis::new("chaos", private), &w1, PACE);
    kills_and_outage(&mut target, &w1, &mut rng, 6);
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_tables_are_exact_after_sigkills_and_an_outage() {
    use fenced_sinks::postgres::Postgres;
    use fenced_sinks::process::{Process, Server};
    use support::services::PrivatePostgres;
    let test = "postgres_tables_are_exact_after_sigkills_and_an_outage";
    let mut rng = rng(test);
    let w1 = w1::generate(EVENTS, 7);
    let shared = Server::Shared(support::services::postgres_url());
    straight_run(
        &mut Process::new(Postgres::new("straight", shared), &w1, 0),
        &w1,
    );
    let private = Server::Private(PrivatePostgres::start());
    let mut target = Process::new(Postgres::new("chaos", private), &w1, PACE);
    kills_and_outage(&mut target, &w1, &mut rng, 6);
}

#[cfg(feature = "mongodb")]
#[test]
fn mongodb_collections_are_exact_after_kills_and_an_outage_in_process() {
    use fenced_sinks::mongodb::Pipeline;
    let test = "mongodb_collections_are_exact_after_kills_and_an_outage_in_process";
    let mut rng = rng(test);
    let w1 = w1::generate(EVENTS, 9);
    straight_run(&mut Pipeline::new(&w1, 0), &w1);
    kills_and_outage(&mut Pipeline::new(&w1, PACE), &w1, &mut rng, 6);
}
