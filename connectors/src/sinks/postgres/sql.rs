//! The SQL the sink sends, built as plain strings so it can be tested
//! without a server. Rows travel as ONE JSON array parameter per statement
//! and become table rows through `json_populate_recordset(NULL::table, ..)`,
//! so the server converts every value to its column's type (numbers, text,
//! timestamps, JSONB, NUMERIC...) and no per-column parameter typing is
//! needed on this side.

use sluice_engine::value::Value;

use super::config::EPOCH_COLUMN;

/// A table name, optionally schema-qualified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

impl TableName {
    /// `name` or `schema.name`; each part is used exactly as written.
    pub(super) fn parse(text: &str) -> Result<TableName, String> {
        let parts: Vec<&str> = text.split('.').collect();
        let bad = || format!("`{text}` is not a table name: write `name` or `schema.name`");
        match parts.as_slice() {
            [name] if !name.is_empty() => Ok(TableName {
                schema: None,
                name: name.to_string(),
            }),
            [schema, name] if !schema.is_empty() && !name.is_empty() => Ok(TableName {
                schema: Some(schema.to_string()),
                name: name.to_string(),
            }),
            _ => Err(bad()),
        }
    }

    /// The quoted name for SQL text (`"public"."counts"`).
    pub(super) fn quoted(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", ident(s), ident(&self.name)),
            None => ident(&self.name),
        }
    }
}

/// A quoted identifier (`"a""b"` for `a"b`).
pub(super) fn ident(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('"');
    for c in name.chars() {
        if c == '"' {
            s.push('"');
        }
        s.push(c);
    }
    s.push('"');
    s
}

fn list(columns: &[String], prefix: &str) -> String {
    columns
        .iter()
        .map(|c| format!("{prefix}{}", ident(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn source(table: &TableName) -> String {
    format!(
        "json_populate_recordset(NULL::{}, $1::text::json) AS r",
        table.quoted()
    )
}

/// Upsert of a JSON array of rows (`$1`) with fence `$2`: a row replaces
/// the stored one only if the stored fence is not newer.
pub(super) fn upsert(table: &TableName, columns: &[String], key: &[String]) -> String {
    let epoch = ident(EPOCH_COLUMN);
    let mut set: Vec<String> = columns
        .iter()
        .filter(|c| !key.contains(c))
        .map(|c| format!("{0} = EXCLUDED.{0}", ident(c)))
        .collect();
    set.push(format!("{epoch} = EXCLUDED.{epoch}"));
    format!(
        "INSERT INTO {t} AS cur ({cols}, {epoch}) SELECT {rcols}, $2::bigint FROM {src} \
         ON CONFLICT ({key}) DO UPDATE SET {set} WHERE cur.{epoch} <= EXCLUDED.{epoch}",
        t = table.quoted(),
        cols = list(columns, ""),
        rcols = list(columns, "r."),
        src = source(table),
        key = list(key, ""),
        set = set.join(", "),
    )
}

/// Deletes the rows whose key is in the JSON array `$1`, unless they were
/// written with a newer fence than `$2`.
pub(super) fn delete(table: &TableName, key: &[String]) -> String {
    let cond: Vec<String> = key
        .iter()
        .map(|k| format!("cur.{0} = r.{0}", ident(k)))
        .collect();
    format!(
        "DELETE FROM {t} AS cur USING {src} WHERE {cond} AND cur.{epoch} <= $2::bigint",
        t = table.quoted(),
        src = source(table),
        cond = cond.join(" AND "),
        epoch = ident(EPOCH_COLUMN),
    )
}

/// Insert of a JSON array of events (`$1`); an id already present is
/// skipped.
pub(super) fn append(table: &TableName, columns: &[String], id_column: &str) -> String {
    format!(
        "INSERT INTO {t} ({cols}) SELECT {rcols} FROM {src} ON CONFLICT ({id}) DO NOTHING",
        t = table.quoted(),
        cols = list(columns, ""),
        rcols = list(columns, "r."),
        src = source(table),
        id = ident(id_column),
    )
}

/// `CREATE TABLE IF NOT EXISTS` with `columns` (name, SQL type), primary
/// key `key`, and the fence column when `fenced`.
pub(super) fn create_table(
    table: &TableName,
    columns: &[(String, String)],
    key: &[String],
    fenced: bool,
) -> String {
    let mut defs: Vec<String> = columns
        .iter()
        .map(|(c, ty)| {
            let not_null = if key.contains(c) { " NOT NULL" } else { "" };
            format!("{} {ty}{not_null}", ident(c))
        })
        .collect();
    if fenced {
        defs.push(format!("{} BIGINT NOT NULL", ident(EPOCH_COLUMN)));
    }
    defs.push(format!("PRIMARY KEY ({})", list(key, "")));
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        table.quoted(),
        defs.join(", ")
    )
}

/// The columns of a table in order, with their types; none if it does not
/// exist. `$1` is the quoted table name.
pub(super) const COLUMNS_QUERY: &str = "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
     FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 \
     AND NOT a.attisdropped ORDER BY a.attnum";

/// The largest fence stored in an upsert table.
pub(super) fn max_fence(table: &TableName) -> String {
    format!(
        "SELECT coalesce(max({}), 0)::bigint FROM {}",
        ident(EPOCH_COLUMN),
        table.quoted()
    )
}

/// The table recording, per destination table, who drew each write
/// generation of a multi-worker run: `sluice_generations` in the
/// destination's schema.
pub(super) fn registry_of(table: &TableName) -> TableName {
    TableName {
        schema: table.schema.clone(),
        name: "sluice_generations".into(),
    }
}

/// The advisory lock held while a generation is drawn (one for the whole
/// database: draws happen only when a sink starts).
pub(super) const REGISTRY_LOCK: i64 = 0x51ce_9e7e;

/// Creates the generation registry if missing.
pub(super) fn registry_create(registry: &TableName) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (destination TEXT NOT NULL, generation BIGINT NOT NULL, \
         pipeline TEXT NOT NULL, sink TEXT NOT NULL, worker BIGINT NOT NULL, workers BIGINT NOT NULL, \
         drawn_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (destination, generation))",
        registry.quoted()
    )
}

/// Records and returns a new generation for destination `$1` drawn by
/// (`$2` pipeline, `$3` sink, `$4` worker, `$5` workers): one above every
/// generation recorded for it and, when `fenced` names the destination
/// table, every generation in its fences.
pub(super) fn registry_draw(registry: &TableName, fenced: Option<&TableName>) -> String {
    let in_table = match fenced {
        Some(t) => format!(
            "(SELECT coalesce(max({}), 0) >> 40 FROM {})",
            ident(EPOCH_COLUMN),
            t.quoted()
        ),
        None => "0".into(),
    };
    format!(
        "INSERT INTO {r} (destination, generation, pipeline, sink, worker, workers) \
         SELECT $1::text, greatest((SELECT coalesce(max(generation), 0) FROM {r} WHERE destination = $1::text), {in_table}) + 1, \
         $2::text, $3::text, $4::bigint, $5::bigint RETURNING generation",
        r = registry.quoted()
    )
}

/// The largest fence in `table` among the generations recorded for
/// destination `$1` and (`$2` pipeline, `$3` sink, `$4` worker).
pub(super) fn own_max_fence(table: &TableName, registry: &TableName) -> String {
    format!(
        "SELECT coalesce(max(t.{e}), 0)::bigint FROM {t} t WHERE (t.{e} >> 40) IN \
         (SELECT generation FROM {r} WHERE destination = $1::text AND pipeline = $2::text \
         AND sink = $3::text AND worker = $4::bigint)",
        e = ident(EPOCH_COLUMN),
        t = table.quoted(),
        r = registry.quoted()
    )
}

/// The SQL type `create_table` gives a column holding `values`.
pub(super) fn infer_type<'a>(values: impl IntoIterator<Item = &'a Value>) -> &'static str {
    let (mut int, mut float, mut boolean, mut json, mut text) = (false, false, false, false, false);
    for v in values {
        match v {
            Value::Missing | Value::Null => {}
            Value::Int(_) => int = true,
            Value::Float(_) => float = true,
            Value::Bool(_) => boolean = true,
            Value::Array(_) | Value::Object(_) => json = true,
            Value::Str(_) => text = true,
        }
    }
    match (int, float, boolean, json, text) {
        (true, false, false, false, false) => "BIGINT",
        (_, true, false, false, false) => "DOUBLE PRECISION",
        (false, false, true, false, false) => "BOOLEAN",
        (false, false, false, true, false) => "JSONB",
        _ => "TEXT",
    }
}
