//! Writing epochs to PostgreSQL: one transaction per epoch over one
//! connection (epochs are written one after another, so a pool would sit
//! idle), rows in batched statements. If a row is refused (constraint,
//! bad value for its column type), the epoch is written again with a
//! savepoint per batch, and the refused batch row by row, so that only the
//! bad rows go to the dead letters.

use std::collections::{BTreeSet, HashMap};

use sluice_engine::sink::{Sink, SinkError, SinkRecord, WriteOutcome};
use sluice_engine::source::BoxFuture;
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, GenericClient, NoTls, Statement};

use crate::sinks::fence::{self, restored, Progress, Restored, Writer};

use super::config::{PostgresMode, PostgresSinkConfig, TlsMode, EPOCH_COLUMN};
use super::rows::{column_types, json_array, Layout, Row, Rows};
use super::sql::{self, TableName};

/// A configured PostgreSQL sink.
pub struct PostgresSink {
    name: String,
    config: PostgresSinkConfig,
    table: Result<TableName, String>,
    layout: Layout,
    conn: Option<Conn>,
    generation: Option<u64>,
    /// Columns of the table, once seen.
    columns: Option<BTreeSet<String>>,
    warned_fields: BTreeSet<String>,
    writer: Writer,
}

struct Conn {
    client: Client,
    task: JoinHandle<()>,
    statements: HashMap<String, Statement>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // closes the socket; the server rolls back an open transaction
        self.task.abort();
    }
}

/// How an error affects the epoch.
enum Failure {
    /// Connection trouble or a transient server state: retry the epoch.
    Retry(String),
    /// This row (or batch) is refused: isolate and dead-letter.
    Row(String),
    /// Retrying cannot help.
    Fatal(String),
}

/// The error with its causes (tokio-postgres keeps the server's message in
/// the source).
fn describe(e: &tokio_postgres::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string().replace('\n', "; "));
        src = cause.source();
    }
    s
}

/// A certificate or TLS protocol problem in a connection error (retrying
/// cannot fix it), found under the I/O error that carries it.
fn tls_failure(e: &tokio_postgres::Error) -> Option<String> {
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(inner) = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(inner.to_string());
        }
        src = cause.source();
    }
    None
}

/// Sorts an error by its SQLSTATE: connection/transient states retry,
/// data and constraint errors are per row, the rest (missing table or
/// column, permissions, no unique index for the key...) is fatal.
fn classify(e: &tokio_postgres::Error) -> Failure {
    let msg = describe(e);
    let Some(code) = e.code().map(|c| c.code()) else {
        return Failure::Retry(msg);
    };
    let class = &code[..2.min(code.len())];
    match (class, code) {
        ("08" | "53" | "58", _) | (_, "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "55P03") => {
            Failure::Retry(msg)
        }
        ("22" | "23", _) | (_, "42804" | "54000") => Failure::Row(msg),
        (_, "42P10") => Failure::Fatal(format!(
            "{msg} (the key columns need a primary key or unique index, e.g. ALTER TABLE ... ADD PRIMARY KEY (...))"
        )),
        _ => Failure::Fatal(msg),
    }
}

impl PostgresSink {
    /// `name` is the component name (for logs). The options are checked
    /// when the pipeline file is loaded; an invalid table name here fails
    /// the sink at start.
    pub fn new(name: &str, config: PostgresSinkConfig) -> Self {
        PostgresSink {
            name: name.to_string(),
            table: TableName::parse(&config.table),
            layout: Layout::new(
                config.mode,
                &config.key,
                &config.id_column,
                config.columns.as_ref(),
            ),
            config,
            conn: None,
            generation: None,
            columns: None,
            warned_fields: BTreeSet::new(),
            writer: Writer::single(name),
        }
    }

    /// The writer this sink is (pipeline, sink, worker): with several
    /// workers, every generation it draws is recorded in the table
    /// `sluice_generations` (beside the destination table) and its start
    /// check only considers its own.
    pub fn with_writer(mut self, writer: Writer) -> Self {
        self.writer = writer;
        self
    }

    /// The table recording who drew each generation.
    fn registry(&self) -> Result<TableName, SinkError> {
        Ok(sql::registry_of(self.table()?))
    }

    /// The largest fence stored in the destination table (0 when it has
    /// no fence column or does not exist yet).
    async fn max_fence(&mut self) -> Result<Option<u64>, SinkError> {
        match self.table_columns().await? {
            Some(cols) if cols.contains(EPOCH_COLUMN) => {
                let q = sql::max_fence(self.table()?);
                let conn = self.connection().await?;
                let row = conn
                    .client
                    .query_one(&q, &[])
                    .await
                    .map_err(|e| classify(&e));
                let max: i64 = row.map_err(|f| self.err(f))?.try_get(0).unwrap_or(0);
                Ok(Some(max.max(0) as u64))
            }
            _ => Ok(None),
        }
    }

    /// With several workers: the largest fence in the destination table
    /// among the generations recorded for this worker of this pipeline
    /// and sink (None without any).
    async fn own_max_fence(&mut self) -> Result<Option<u64>, SinkError> {
        let has_fences = matches!(self.table_columns().await?, Some(c) if c.contains(EPOCH_COLUMN));
        let registry = self.registry()?;
        let destination = self.table()?.quoted();
        let q = sql::own_max_fence(self.table()?, &registry);
        let writer = self.writer.clone();
        let conn = self.connection().await?;
        let exists = conn
            .client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&registry.quoted()])
            .await
            .and_then(|r| r.try_get::<_, bool>(0))
            .map_err(|e| classify(&e));
        if !exists.map_err(|f| self.err(f))? || !has_fences {
            return Ok(None);
        }
        let conn = self.connection().await?;
        let row = conn
            .client
            .query_one(
                &q,
                &[
                    &destination,
                    &writer.pipeline,
                    &writer.sink,
                    &i64::from(writer.worker),
                ],
            )
            .await
            .map_err(|e| classify(&e));
        let max: i64 = row.map_err(|f| self.err(f))?.try_get(0).unwrap_or(0);
        Ok((max > 0).then_some(max as u64))
    }

    /// With several workers: draws a generation above every generation
    /// recorded for the destination table and every fence in it, and
    /// records this writer with it, in one transaction under an advisory
    /// lock (so that concurrent workers never draw the same one).
    async fn draw_recorded(&mut self) -> Result<u64, SinkError> {
        let with_fences =
            matches!(self.table_columns().await?, Some(c) if c.contains(EPOCH_COLUMN));
        let registry = self.registry()?;
        let destination = self.table()?.quoted();
        let create = sql::registry_create(&registry);
        let draw = sql::registry_draw(&registry, with_fences.then_some(self.table()?));
        let writer = self.writer.clone();
        let conn = self.connection().await?;
        let drawn = async {
            let tx = conn.client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&sql::REGISTRY_LOCK])
                .await?;
            tx.batch_execute(&create).await?;
            let row = tx
                .query_one(
                    &draw,
                    &[
                        &destination,
                        &writer.pipeline,
                        &writer.sink,
                        &i64::from(writer.worker),
                        &i64::from(writer.workers),
                    ],
                )
                .await?;
            let generation: i64 = row.try_get(0)?;
            tx.commit().await?;
            Ok::<i64, tokio_postgres::Error>(generation)
        }
        .await
        .map_err(|e| classify(&e));
        let generation = drawn.map_err(|f| self.err(f))?;
        Ok(generation.max(1) as u64)
    }

    fn err(&self, f: Failure) -> SinkError {
        match f {
            Failure::Retry(m) => {
                SinkError::Retryable(format!("postgres sink `{}`: {m}", self.name))
            }
            Failure::Row(m) | Failure::Fatal(m) => SinkError::Fatal(format!(
                "postgres sink `{}` (table {}): {m}",
                self.name, self.config.table
            )),
        }
    }

    fn table(&self) -> Result<&TableName, SinkError> {
        self.table
            .as_ref()
            .map_err(|e| SinkError::Fatal(format!("postgres sink `{}`: {e}", self.name)))
    }

    /// The open connection, or a new one (the host name is resolved again).
    async fn connection(&mut self) -> Result<&mut Conn, SinkError> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let conn = self.connect().await?;
            tracing::info!(component = %self.name, "connected to postgres");
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| SinkError::Retryable("postgres connection lost".into()))
    }

    async fn connect(&self) -> Result<Conn, SinkError> {
        let mut cfg: tokio_postgres::Config =
            self.config.url.parse().map_err(|e| {
                SinkError::Fatal(format!("postgres sink `{}`: `url`: {e}", self.name))
            })?;
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(self.config.connect_timeout.0);
        }
        if cfg.get_application_name().is_none() {
            cfg.application_name("sluice");
        }
        let failed = |e: tokio_postgres::Error| match (classify(&e), tls_failure(&e)) {
            (_, Some(tls)) => SinkError::Fatal(format!(
                "postgres sink `{}`: TLS: {tls} (trust the server's CA with `tls_ca_file`)",
                self.name
            )),
            (Failure::Fatal(m), None) => {
                SinkError::Fatal(format!("postgres sink `{}`: {m}", self.name))
            }
            _ => SinkError::Retryable(format!(
                "postgres sink `{}`: cannot connect: {}",
                self.name,
                describe(&e)
            )),
        };
        let (client, task) = match self.config.tls {
            TlsMode::Disable => {
                cfg.ssl_mode(SslMode::Disable);
                let (client, connection) = cfg.connect(NoTls).await.map_err(failed)?;
                (client, tokio::spawn(drive(connection)))
            }
            TlsMode::Require => {
                cfg.ssl_mode(SslMode::Require);
                let tls = super::tls::connector(self.config.tls_ca_file.as_deref())
                    .map_err(|e| SinkError::Fatal(format!("postgres sink `{}`: {e}", self.name)))?;
                let (client, connection) = cfg.connect(tls).await.map_err(failed)?;
                (client, tokio::spawn(drive(connection)))
            }
        };
        Ok(Conn {
            client,
            task,
            statements: HashMap::new(),
        })
    }

    /// Reads the table's columns (None if it does not exist).
    async fn table_columns(&mut self) -> Result<Option<BTreeSet<String>>, SinkError> {
        let quoted = self.table()?.quoted();
        let conn = self.connection().await?;
        let rows = conn
            .client
            .query(sql::COLUMNS_QUERY, &[&quoted])
            .await
            .map_err(|e| classify(&e));
        let rows = rows.map_err(|f| self.err(f))?;
        let cols: BTreeSet<String> = rows
            .iter()
            .filter_map(|r| r.try_get::<_, String>(0).ok())
            .collect();
        Ok((!cols.is_empty()).then_some(cols))
    }

    /// Makes sure the table exists (creating it from `records` if allowed)
    /// and has the columns this sink needs.
    async fn ensure_table(&mut self, records: &[SinkRecord]) -> Result<(), SinkError> {
        if self.columns.is_some() {
            return Ok(());
        }
        let mut cols = self.table_columns().await?;
        if cols.is_none() {
            if !self.config.create_table {
                return Err(SinkError::Fatal(format!(
                    "postgres sink `{}`: table {} does not exist; create it or set create_table = true",
                    self.name, self.config.table
                )));
            }
            let mut unknown = BTreeSet::new();
            let columns = self.layout.columns(records, None, &mut unknown);
            let types = column_types(&self.layout, &columns, records, &self.config.column_types);
            let (key, fenced) = match self.config.mode {
                PostgresMode::Upsert => (self.config.key.clone(), true),
                PostgresMode::Append => (vec![self.config.id_column.clone()], false),
            };
            let ddl = sql::create_table(self.table()?, &types, &key, fenced);
            tracing::info!(component = %self.name, sql = %ddl, "creating the table");
            let conn = self.connection().await?;
            let created = conn.client.batch_execute(&ddl).await;
            cols = self.table_columns().await?;
            match created {
                Ok(()) => {}
                // Another worker created it at the same moment (IF NOT
                // EXISTS does not cover a concurrent creation: the server
                // reports a duplicate type or key).
                Err(e) if cols.is_some() => {
                    tracing::debug!(component = %self.name, error = %describe(&e), "the table was created concurrently");
                }
                Err(e) => return Err(self.err(classify(&e))),
            }
        }
        let cols = cols.unwrap_or_default();
        let mut needed: Vec<&str> = match self.config.mode {
            PostgresMode::Upsert => self
                .config
                .key
                .iter()
                .map(String::as_str)
                .chain([EPOCH_COLUMN])
                .collect(),
            PostgresMode::Append => vec![self.config.id_column.as_str()],
        };
        if let Some(m) = &self.config.columns {
            needed.extend(m.keys().map(String::as_str));
        }
        if let Some(missing) = needed.iter().find(|c| !cols.contains(**c)) {
            let hint = if *missing == EPOCH_COLUMN {
                format!(
                    " (add it: ALTER TABLE {} ADD COLUMN {EPOCH_COLUMN} BIGINT NOT NULL DEFAULT 0)",
                    self.config.table
                )
            } else {
                String::new()
            };
            return Err(SinkError::Fatal(format!(
                "postgres sink `{}`: table {} has no column `{missing}`{hint}",
                self.name, self.config.table
            )));
        }
        self.columns = Some(cols);
        Ok(())
    }

    async fn write_epoch(
        &mut self,
        epoch: u64,
        records: &[SinkRecord],
    ) -> Result<WriteOutcome, SinkError> {
        let worker = self.writer.worker_id();
        let progress = self
            .generation
            .map(|generation| Progress { generation, worker }.encode());
        if records.is_empty() {
            return Ok(WriteOutcome {
                progress,
                rejected: Vec::new(),
                fenced: 0,
            });
        }
        self.ensure_table(records).await?;
        let mut rows = self.layout.rows(records, self.columns.as_ref());
        let mut rejected = std::mem::take(&mut rows.rejected);
        for f in &rows.unknown_fields {
            if self.warned_fields.insert(f.clone()) {
                tracing::warn!(component = %self.name, field = %f, table = %self.config.table, "record field has no column in the table; skipped");
            }
        }
        if rows.ignored_deletes > 0 {
            tracing::warn!(component = %self.name, deletes = rows.ignored_deletes, "append mode ignores deletes");
        }
        let fence = match self.config.mode {
            PostgresMode::Append => 0,
            PostgresMode::Upsert => {
                let generation = self.generation.ok_or_else(|| {
                    SinkError::Internal("postgres sink used before restore".into())
                })?;
                fence::fence(generation, epoch).ok_or_else(|| {
                    SinkError::Fatal(format!(
                        "postgres sink `{}`: epoch {epoch} out of range",
                        self.name
                    ))
                })? as i64
            }
        };
        let batches = self.batches(&rows)?;
        let timeout = self.config.request_timeout.0;
        let first = tokio::time::timeout(timeout, self.apply(&batches, fence, false)).await;
        let outcome = match first {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(Failure::Row(m))) => {
                tracing::warn!(component = %self.name, epoch, error = %m, "a row was refused; writing the epoch again row by row where needed");
                match tokio::time::timeout(timeout, self.apply(&batches, fence, true)).await {
                    Ok(r) => r,
                    Err(_) => Err(Failure::Retry(format!("no answer within {timeout:?}"))),
                }
            }
            Ok(Err(f)) => Err(f),
            Err(_) => Err(Failure::Retry(format!("no answer within {timeout:?}"))),
        };
        match outcome {
            Ok((mut refused, fenced)) => {
                rejected.append(&mut refused);
                Ok(WriteOutcome {
                    progress,
                    rejected,
                    fenced,
                })
            }
            Err(f) => {
                if matches!(f, Failure::Retry(_)) {
                    self.conn = None;
                }
                Err(self.err(f))
            }
        }
    }

    /// The statements of an epoch: (SQL, rows) per batch.
    fn batches<'r>(&self, rows: &'r Rows) -> Result<Vec<(String, Vec<&'r Row>)>, SinkError> {
        let table = self.table()?;
        let n = self.config.batch_size;
        let mut out = Vec::new();
        if !rows.upserts.is_empty() {
            let stmt = match self.config.mode {
                PostgresMode::Upsert => sql::upsert(table, &rows.columns, &self.config.key),
                PostgresMode::Append => sql::append(table, &rows.columns, &self.config.id_column),
            };
            out.extend(
                rows.upserts
                    .chunks(n)
                    .map(|c| (stmt.clone(), c.iter().collect())),
            );
        }
        if !rows.deletes.is_empty() {
            let stmt = sql::delete(table, &self.config.key);
            out.extend(
                rows.deletes
                    .chunks(n)
                    .map(|c| (stmt.clone(), c.iter().collect())),
            );
        }
        Ok(out)
    }

    /// One transaction for the epoch. Fast path: all batches pipelined. In
    /// `careful` mode: a savepoint per batch, and a refused batch again row
    /// by row; returns the refused rows and the number of upserts the
    /// fence refused (a newer row was stored: the statement left it alone).
    async fn apply(
        &mut self,
        batches: &[(String, Vec<&Row>)],
        fence: i64,
        careful: bool,
    ) -> Result<(Vec<(usize, String)>, u64), Failure> {
        let fenced = self.config.mode == PostgresMode::Upsert;
        let conn = self
            .connection()
            .await
            .map_err(|e| Failure::Retry(e.to_string()))?;
        let mut statements = Vec::with_capacity(batches.len());
        for (text, _) in batches {
            statements.push(prepare(conn, text).await?);
        }
        let tx = conn.client.transaction().await.map_err(|e| classify(&e))?;
        let mut refused = Vec::new();
        let mut fenced_out = 0u64;
        // Only fenced upserts can be left alone by the fence (an append's
        // skipped duplicate is deduplication, a delete's missing row is
        // not told apart from a fenced one).
        let counts = |text: &str| fenced && text.starts_with("INSERT");
        if !careful {
            let jsons: Vec<String> = batches
                .iter()
                .map(|(_, rows)| json_array(rows.iter().copied()))
                .collect();
            let runs = statements
                .iter()
                .zip(&jsons)
                .map(|(stmt, json)| execute(&tx, stmt, json, fenced.then_some(fence)));
            // The statements are pipelined; after a failure the later ones
            // only report the aborted transaction, so the first error in
            // statement order is the cause.
            for (result, (text, rows)) in futures::future::join_all(runs)
                .await
                .into_iter()
                .zip(batches)
            {
                let applied = result?;
                if counts(text) {
                    fenced_out += (rows.len() as u64).saturating_sub(applied);
                }
            }
        } else {
            let mut tx = tx;
            for ((text, rows), stmt) in batches.iter().zip(&statements) {
                let json = json_array(rows.iter().copied());
                let sp = tx
                    .savepoint("sluice_batch")
                    .await
                    .map_err(|e| classify(&e))?;
                match execute(&sp, stmt, &json, fenced.then_some(fence)).await {
                    Ok(applied) => {
                        sp.commit().await.map_err(|e| classify(&e))?;
                        if counts(text) {
                            fenced_out += (rows.len() as u64).saturating_sub(applied);
                        }
                    }
                    Err(Failure::Row(_)) => {
                        sp.rollback().await.map_err(|e| classify(&e))?;
                        for row in rows {
                            let one = json_array([*row]);
                            let sp = tx.savepoint("sluice_row").await.map_err(|e| classify(&e))?;
                            match execute(&sp, stmt, &one, fenced.then_some(fence)).await {
                                Ok(applied) => {
                                    sp.commit().await.map_err(|e| classify(&e))?;
                                    if counts(text) && applied == 0 {
                                        fenced_out += 1;
                                    }
                                }
                                Err(Failure::Row(reason)) => {
                                    sp.rollback().await.map_err(|e| classify(&e))?;
                                    refused.push((
                                        row.index,
                                        format!("postgres refused the row: {reason}"),
                                    ));
                                }
                                Err(f) => return Err(f),
                            }
                        }
                    }
                    Err(f) => return Err(f),
                }
            }
            tx.commit().await.map_err(|e| classify(&e))?;
            return Ok((refused, fenced_out));
        }
        tx.commit().await.map_err(|e| classify(&e))?;
        Ok((refused, fenced_out))
    }
}

async fn drive<F>(connection: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = connection.await {
        tracing::debug!(error = %describe(&e), "postgres connection ended");
    }
}

async fn prepare(conn: &mut Conn, text: &str) -> Result<Statement, Failure> {
    if let Some(s) = conn.statements.get(text) {
        return Ok(s.clone());
    }
    let stmt = conn.client.prepare(text).await.map_err(|e| classify(&e))?;
    conn.statements.insert(text.to_string(), stmt.clone());
    Ok(stmt)
}

async fn execute(
    client: &impl GenericClient,
    stmt: &Statement,
    json: &str,
    fence: Option<i64>,
) -> Result<u64, Failure> {
    let result = match fence {
        Some(f) => client.execute(stmt, &[&json, &f]).await,
        None => client.execute(stmt, &[&json]).await,
    };
    result.map_err(|e| classify(&e))
}

impl Sink for PostgresSink {
    fn restore_former<'a>(
        &'a mut self,
        progress: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<bool, SinkError>> {
        Box::pin(async move {
            self.table()?;
            if self.config.mode == PostgresMode::Append {
                // Appends are keyed by the record's id: writing one again
                // changes nothing.
                self.generation = Some(0);
                self.connection().await?;
                return Ok(true);
            }
            // Every write is fenced (and keyed by the record's id): the
            // former owner's epochs, under its generation, only fill keys
            // no newer owner wrote since.
            let generation = fence::former_generation(progress).ok_or_else(|| {
                SinkError::Fatal(format!("postgres sink `{}`: corrupt progress", self.name))
            })?;
            self.generation = Some(generation);
            Ok(true)
        })
    }

    fn restore<'a>(
        &'a mut self,
        progress: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            self.table()?;
            if self.config.mode == PostgresMode::Append {
                self.generation = Some(0);
                // fail early on a bad address or missing table
                self.connection().await?;
                return Ok(());
            }
            let worker = self.writer.worker_id();
            let previous = match restored(progress, worker) {
                Some(Restored::Keep(generation)) => {
                    self.generation = Some(generation);
                    return Ok(());
                }
                Some(Restored::Draw { previous }) => previous,
                None => {
                    return Err(SinkError::Fatal(format!(
                        "postgres sink `{}`: corrupt progress",
                        self.name
                    )))
                }
            };
            // Fresh state: a generation above every fence in the table, so
            // that our epochs (which restart at 1) supersede older rows.
            // With several workers the generation is also above every one
            // drawn for this table and recorded with this writer; key
            // groups that moved are then written above their former owner.
            let generation = if self.writer.shared() {
                self.draw_recorded().await?
            } else {
                self.max_fence()
                    .await?
                    .map_or(1, |max| fence::generation_of(max) + 1)
            };
            match previous {
                None => {
                    tracing::info!(component = %self.name, generation, "fresh start: new write generation")
                }
                Some(p) => {
                    tracing::info!(component = %self.name, generation, previous = p.generation, was = %p.worker, now = %worker,
                        "key group ownership changed: new write generation")
                }
            }
            self.generation = Some(generation);
            Ok(())
        })
    }

    fn earlier_output<'a>(
        &'a mut self,
        restored_epoch: u64,
        progress: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<Option<String>, SinkError>> {
        Box::pin(async move {
            // Only fenced upsert tables carry epochs; with several workers
            // only this worker's own generations count.
            let newest = if self.writer.shared() {
                self.own_max_fence().await?
            } else {
                self.max_fence().await?
            };
            let destination = format!("table {}", self.table()?.quoted());
            Ok(fence::unexplained_for(
                &destination,
                newest,
                restored_epoch,
                progress,
                self.writer.worker_id(),
            ))
        })
    }

    fn write<'a>(
        &'a mut self,
        epoch: u64,
        records: &'a [SinkRecord],
    ) -> BoxFuture<'a, Result<WriteOutcome, SinkError>> {
        Box::pin(self.write_epoch(epoch, records))
    }

    fn close(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        self.conn = None;
        Box::pin(async { Ok(()) })
    }
}
