//! The HTTP stack's own limit, for `bench/http_load.sh`: an axum server that
//! answers `202 Accepted` to every `POST` on sluice's HTTP source path and
//! does nothing else (no validation, no journal, no pipeline).
//!
//! ```text
//! http_null --address 127.0.0.1:8080 [--path /ingest]
//! ```
//!
//! It uses what sluice's HTTP source uses: the workspace's axum, hyper and
//! tokio (HTTP/1.1 keep-alive), on a multi-threaded tokio runtime with the
//! default number of worker threads (one per core), as `sluice run` builds
//! it. The body is read to its end (a server must, to keep the connection
//! alive) and dropped; the answer is an empty `202`. `loadgen` counts the
//! events of every request answered `202` itself, so its figures mean the
//! same against this server as against sluice.
//! It runs until it is killed.

use std::process::ExitCode;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;

/// Reads the body to its end and answers `202` with no body.
async fn accept(body: Bytes) -> StatusCode {
    drop(body);
    StatusCode::ACCEPTED
}

fn parse_args() -> Result<(String, String), String> {
    let (mut address, mut path) = (None, "/ingest".to_string());
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--address" => address = Some(value),
            "--path" => path = value,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let address = address.ok_or("--address is required")?;
    if !(address.starts_with("127.") || address.starts_with("localhost:")) {
        return Err("http_null only listens on loopback addresses".into());
    }
    if !path.starts_with('/') {
        return Err("--path must start with /".into());
    }
    Ok((address, path))
}

fn main() -> ExitCode {
    let (address, path) = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("http_null: {e}\nusage: http_null --address 127.0.0.1:PORT [--path /ingest]");
            return ExitCode::from(2);
        }
    };
    // As sluice's `runtime()` (src/cli/mod.rs): default worker count.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("http_null: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), std::io::Error> = rt.block_on(async {
        let app = Router::new()
            .route(&path, post(accept))
            .layer(DefaultBodyLimit::disable());
        let listener = tokio::net::TcpListener::bind(&address).await?;
        eprintln!("http_null: listening on {address}{path}");
        axum::serve(listener, app).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("http_null: {e}");
            ExitCode::FAILURE
        }
    }
}
