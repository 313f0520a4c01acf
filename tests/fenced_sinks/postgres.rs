//! The PostgreSQL sink as a [`Destination`]: per-country and per-window
//! counts upserted into tables keyed by their group, and the raw events
//! appended by event id. A private cluster can be shut down
//! (`pg_ctl stop -m fast`) and started again.

use std::collections::BTreeMap;

use crate::fenced_sinks::process::{Destination, Server};
use crate::fenced_sinks::{Appended, Stored};
use crate::support::services::{psql, unique, PrivatePostgres};

const SINKS: &str = r#"
[sinks.counts]
type = "postgres"
inputs = ["by_country"]
url = "${POSTGRES_URL}"
table = "${TABLE}_country"
key = ["country"]
create_table = true
[sinks.windows]
type = "postgres"
inputs = ["per_minute"]
url = "${POSTGRES_URL}"
table = "${TABLE}_windows"
key = ["window_start", "country", "weather"]
create_table = true
batch_size = 300
[sinks.events]
type = "postgres"
inputs = ["weather"]
url = "${POSTGRES_URL}"
table = "${TABLE}_events"
mode = "append"
columns = { country = "country", weather = "weather", ts = "ts" }
create_table = true
"#;

pub(crate) struct Postgres {
    server: Server<PrivatePostgres>,
    url: String,
    table: String,
}

impl Postgres {
    /// Tables named after `test` on `server`.
    pub(crate) fn new(test: &str, server: Server<PrivatePostgres>) -> Postgres {
        Postgres {
            url: server.url(),
            table: format!("sluice_it_{}", unique(test)),
            server,
        }
    }

    /// Rows of `sql` whose last column is a count, keyed by the others.
    fn map(&self, sql: &str) -> BTreeMap<String, i64> {
        psql(&self.url, sql)
            .into_iter()
            .map(|mut row| {
                let n = row.pop().unwrap().parse().unwrap();
                (row.join(","), n)
            })
            .collect()
    }
}

impl Destination for Postgres {
    fn name(&self) -> String {
        "postgres".into()
    }

    fn sinks(&self) -> &'static str {
        SINKS
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("POSTGRES_URL", self.url.clone()),
            ("TABLE", self.table.clone()),
        ]
    }

    fn written(&self) -> i64 {
        // The table appears with the first write.
        let t = &self.table;
        let exists = psql(
            &self.url,
            &format!("SELECT to_regclass('{t}_country') IS NOT NULL"),
        );
        if exists[0][0] != "t" {
            return 0;
        }
        let sum = psql(
            &self.url,
            &format!("SELECT coalesce(sum(count), 0) FROM {t}_country"),
        );
        sum[0][0].parse().unwrap()
    }

    fn stored(&self) -> Stored {
        let t = &self.table;
        let rows = psql(
            &self.url,
            &format!("SELECT count(*), count(DISTINCT event_id) FROM {t}_events"),
        );
        Stored {
            by_country: self.map(&format!("SELECT country, count FROM {t}_country")),
            by_window: self.map(&format!(
                "SELECT window_start, country, weather, count FROM {t}_windows"
            )),
            total: None,
            appended: Some(Appended {
                rows: rows[0][0].parse().unwrap(),
                distinct_ids: rows[0][1].parse().unwrap(),
                by_country: self.map(&format!(
                    "SELECT country, count(*) FROM {t}_events GROUP BY country"
                )),
            }),
        }
    }

    fn down(&mut self) {
        self.server.stop();
    }

    fn up(&mut self) {
        self.server.launch();
    }

    fn cleanup(&self) {
        if !self.server.is_shared() {
            return; // the cluster goes with its directory
        }
        let t = &self.table;
        psql(
            &self.url,
            &format!("DROP TABLE IF EXISTS {t}_country, {t}_windows, {t}_events"),
        );
    }
}
