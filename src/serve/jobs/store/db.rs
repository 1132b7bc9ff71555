//! The two SQL back-ends behind one small synchronous interface, so that every statement
//! of the job store is written once.
//!
//! - **SQLite** (embedded, the default): one connection behind a mutex, WAL mode.
//! - **PostgreSQL** (`--database-url postgres://…`, many replicas): a small pool of
//!   `tokio-postgres` clients. Their connections run on a private one-thread runtime, and
//!   a caller waits for its statement with `futures_executor::block_on`. A client future
//!   only talks to its connection task over channels, so waiting this way is safe on any
//!   thread, including the service's own runtime threads (where the blocking `postgres`
//!   crate would panic with "cannot start a runtime from within a runtime"). A statement
//!   takes about as long as a SQLite one, so the store stays synchronous for its callers.
//!
//! Statements use SQLite's `?1` placeholders; for PostgreSQL they are rewritten to `$1`.
//! Both schemas name their insertion order `rowid` (SQLite's implicit column; an identity
//! column on PostgreSQL) so that the same `ORDER BY` works on both.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use rusqlite::types::ValueRef;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job store error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("job store error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("cannot open the job store at {location}: {detail}")]
    Open { location: String, detail: String },
    /// The database cannot be reached now (PostgreSQL down, every connection busy).
    #[error("the job store is unavailable: {0}")]
    Unavailable(String),
    /// A row this build cannot read (a damaged row, or a newer schema).
    #[error("job store row: {0}")]
    Decode(String),
}

impl StoreError {
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Sqlite(_) | StoreError::Postgres(_) | StoreError::Decode(_) => {
                "store_error"
            }
            StoreError::Open { .. } | StoreError::Unavailable(_) => "store_unavailable",
        }
    }
}

/// Times are stored as integers: unix seconds for the job's own times, milliseconds for
/// lease deadlines.
/// Unix seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix milliseconds, for lease deadlines.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Which SQL dialect a statement is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A parameter or a column value. Every integer is 64-bit (the PostgreSQL schema uses
/// BIGINT throughout, so one binding fits both back-ends).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(v.into())
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(v.into())
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Real(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::ToSqlOutput::Borrowed;
        Ok(match self {
            Value::Null => Borrowed(ValueRef::Null),
            Value::Int(v) => Borrowed(ValueRef::Integer(*v)),
            Value::Real(v) => Borrowed(ValueRef::Real(*v)),
            Value::Text(v) => Borrowed(ValueRef::Text(v.as_bytes())),
        })
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // Checked per value: a 64-bit integer bound to a 32-bit column would be garbage.
        let mismatch = || format!("a {self:?} cannot be sent as {ty}").into();
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) if <i64 as ToSql>::accepts(ty) => v.to_sql(ty, out),
            Value::Real(v) if <f64 as ToSql>::accepts(ty) => v.to_sql(ty, out),
            Value::Text(v) if <&str as ToSql>::accepts(ty) => v.as_str().to_sql(ty, out),
            _ => Err(mismatch()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// One result row, its values in `SELECT` order.
#[derive(Debug, Clone)]
pub struct Row(Vec<Value>);

impl Row {
    fn value(&self, i: usize) -> Result<&Value, StoreError> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Decode(format!("no column {i}")))
    }

    fn mismatch(&self, i: usize, want: &str) -> StoreError {
        StoreError::Decode(format!("column {i}: {:?} is not {want}", self.0.get(i)))
    }

    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.value(i)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            _ => Err(self.mismatch(i, "an integer")),
        }
    }

    pub fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.opt_int(i)?
            .ok_or_else(|| self.mismatch(i, "an integer"))
    }

    /// A non-negative integer (counts, times, attempts).
    pub fn count<T: TryFrom<i64>>(&self, i: usize) -> Result<T, StoreError> {
        T::try_from(self.int(i)?).map_err(|_| self.mismatch(i, "a count"))
    }

    pub fn opt_count<T: TryFrom<i64>>(&self, i: usize) -> Result<Option<T>, StoreError> {
        self.opt_int(i)?
            .map(|v| T::try_from(v).map_err(|_| self.mismatch(i, "a count")))
            .transpose()
    }

    pub fn opt_real(&self, i: usize) -> Result<Option<f64>, StoreError> {
        match self.value(i)? {
            Value::Null => Ok(None),
            Value::Real(v) => Ok(Some(*v)),
            Value::Int(v) => Ok(Some(*v as f64)),
            _ => Err(self.mismatch(i, "a number")),
        }
    }

    pub fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.value(i)? {
            Value::Null => Ok(None),
            Value::Text(v) => Ok(Some(v.clone())),
            _ => Err(self.mismatch(i, "text")),
        }
    }

    pub fn text(&self, i: usize) -> Result<String, StoreError> {
        self.opt_text(i)?.ok_or_else(|| self.mismatch(i, "text"))
    }
}

/// What a store operation runs its statements on: a connection, or a transaction.
pub trait Sql {
    fn dialect(&self) -> Dialect;
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError>;
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError>;
    /// Several statements without parameters (migrations).
    fn batch(&mut self, sql: &str) -> Result<(), StoreError>;

    fn query_opt(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

/// A SQLite connection (or transaction, which derefs to one).
struct Lite<'a>(&'a rusqlite::Connection);

impl Sql for Lite<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let values = (0..columns)
                .map(|i| {
                    Ok(match row.get_ref(i)? {
                        ValueRef::Null => Value::Null,
                        ValueRef::Integer(v) => Value::Int(v),
                        ValueRef::Real(v) => Value::Real(v),
                        ValueRef::Text(v) => Value::Text(String::from_utf8_lossy(v).into_owned()),
                        ValueRef::Blob(_) => {
                            return Err(StoreError::Decode(format!("column {i} is a blob")));
                        }
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            out.push(Row(values));
        }
        Ok(out)
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let n = self
            .0
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(params))?;
        Ok(n as u64)
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self.0.execute_batch(sql)?)
    }
}

/// `?1` → `$1`. The store's statements hold no `?` inside string literals.
fn postgres_placeholders(sql: &str) -> String {
    sql.replace('?', "$")
}

/// A PostgreSQL client (or transaction) driven from synchronous code.
struct Pg<'a, C>(&'a C);

impl<C: tokio_postgres::GenericClient + Sync> Sql for Pg<'_, C> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let sql = postgres_placeholders(sql);
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let rows = futures_executor::block_on(self.0.query(sql.as_str(), &refs))?;
        rows.iter().map(postgres_row).collect()
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let sql = postgres_placeholders(sql);
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        Ok(futures_executor::block_on(
            self.0.execute(sql.as_str(), &refs),
        )?)
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(futures_executor::block_on(self.0.batch_execute(sql))?)
    }
}

fn postgres_row(row: &tokio_postgres::Row) -> Result<Row, StoreError> {
    let values = row
        .columns()
        .iter()
        .enumerate()
        .map(|(i, column)| {
            let ty = column.type_();
            Ok(if *ty == Type::INT8 {
                row.try_get::<_, Option<i64>>(i)?.into()
            } else if *ty == Type::INT4 {
                row.try_get::<_, Option<i32>>(i)?.map(i64::from).into()
            } else if *ty == Type::FLOAT8 {
                row.try_get::<_, Option<f64>>(i)?.into()
            } else if *ty == Type::TEXT || *ty == Type::VARCHAR {
                row.try_get::<_, Option<String>>(i)?.into()
            } else {
                return Err(StoreError::Decode(format!(
                    "column {} has type {ty}, which the store does not use",
                    column.name()
                )));
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Row(values))
}

/// The back-end a [`super::Store`] runs on.
pub enum Backend {
    Sqlite(Mutex<rusqlite::Connection>),
    // Boxed: the pool (runtime, config, client list) is far larger than a connection.
    Postgres(Box<PgPool>),
}

impl Backend {
    /// Runs `f` on a connection, each statement committed on its own.
    pub fn run<T>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match self {
            Backend::Sqlite(conn) => f(&mut Lite(&lock(conn))),
            Backend::Postgres(pool) => {
                let client = pool.checkout()?;
                f(&mut Pg(&*client))
            }
        }
    }

    /// Runs `f` in one transaction: committed if it returns `Ok`, rolled back otherwise.
    pub fn transaction<T>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match self {
            Backend::Sqlite(conn) => {
                let mut conn = lock(conn);
                // IMMEDIATE takes the write lock up front, so two processes sharing the
                // file cannot both read and then fail to upgrade (SQLITE_BUSY mid-way).
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let out = f(&mut Lite(&tx))?;
                tx.commit()?;
                Ok(out)
            }
            Backend::Postgres(pool) => {
                let mut client = pool.checkout()?;
                let tx = futures_executor::block_on(client.transaction())?;
                let out = f(&mut Pg(&tx))?;
                futures_executor::block_on(tx.commit())?;
                Ok(out)
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Opens the SQLite store file.
pub fn open_sqlite(path: &std::path::Path) -> Result<Backend, StoreError> {
    let open_error = |detail: String| StoreError::Open {
        location: path.display().to_string(),
        detail,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| open_error(e.to_string()))?;
    }
    let conn = rusqlite::Connection::open(path).map_err(|e| open_error(e.to_string()))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL is durable across process crashes in WAL mode; only a power cut can lose
    // the last transactions, which the job queue tolerates (the client retries).
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(Backend::Sqlite(Mutex::new(conn)))
}

/// A few PostgreSQL clients, opened on demand and reused.
pub struct PgPool {
    /// Drives the clients' connections (and the LISTEN connection). `None` only while
    /// dropping.
    runtime: Option<tokio::runtime::Runtime>,
    config: tokio_postgres::Config,
    idle: Mutex<PoolState>,
    returned: Condvar,
    max: usize,
}

struct PoolState {
    idle: Vec<tokio_postgres::Client>,
    open: usize,
}

/// How long a statement waits for a free client before the store reports itself
/// unavailable (503) instead of queueing callers without bound.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(10);

impl PgPool {
    /// Connects once to check the URL and the server, and keeps that client.
    pub fn connect(url: &str, max: usize) -> Result<PgPool, StoreError> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| StoreError::Open {
            location: redact(url),
            detail: format!("not a PostgreSQL URL: {e}"),
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("slidegrade-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Open {
                location: redact(url),
                detail: e.to_string(),
            })?;
        let pool = PgPool {
            runtime: Some(runtime),
            config,
            idle: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
            max: max.max(1),
        };
        let first = pool.open_client().map_err(|e| StoreError::Open {
            location: redact(url),
            detail: e.to_string(),
        })?;
        let mut state = lock(&pool.idle);
        state.open = 1;
        state.idle.push(first);
        drop(state);
        Ok(pool)
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        // Only `Drop` takes it.
        self.runtime
            .as_ref()
            .expect("the pool's runtime lives until drop")
    }

    fn open_client(&self) -> Result<tokio_postgres::Client, StoreError> {
        let config = self.config.clone();
        let connecting = self.runtime().spawn(async move {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(%e, "PostgreSQL connection closed");
                }
            });
            Ok::<_, tokio_postgres::Error>(client)
        });
        futures_executor::block_on(connecting)
            .map_err(|e| StoreError::Unavailable(format!("connecting task failed: {e}")))?
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    fn checkout(&self) -> Result<Pooled<'_>, StoreError> {
        let mut state = lock(&self.idle);
        loop {
            while let Some(client) = state.idle.pop() {
                if !client.is_closed() {
                    return Ok(Pooled {
                        pool: self,
                        client: Some(client),
                    });
                }
                // The server closed it (restart, idle timeout): forget it.
                state.open -= 1;
            }
            if state.open < self.max {
                state.open += 1;
                drop(state);
                return match self.open_client() {
                    Ok(client) => Ok(Pooled {
                        pool: self,
                        client: Some(client),
                    }),
                    Err(e) => {
                        lock(&self.idle).open -= 1;
                        Err(e)
                    }
                };
            }
            let (next, timeout) = self
                .returned
                .wait_timeout(state, CHECKOUT_TIMEOUT)
                .unwrap_or_else(|e| e.into_inner());
            state = next;
            if timeout.timed_out() && state.idle.is_empty() {
                return Err(StoreError::Unavailable(format!(
                    "no free PostgreSQL connection after {} s",
                    CHECKOUT_TIMEOUT.as_secs()
                )));
            }
        }
    }

    /// Calls `wake` on every notification on `channel`, reconnecting after errors, for
    /// as long as the pool lives.
    pub fn listen(&self, channel: &'static str, wake: impl Fn() + Send + Sync + 'static) {
        let config = self.config.clone();
        self.runtime().spawn(async move {
            loop {
                if let Err(e) = listen_once(&config, channel, &wake).await {
                    tracing::warn!(%e, channel, "LISTEN connection lost; reconnecting in 1 s");
                }
                // Work may have been queued while no one listened.
                wake();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

async fn listen_once(
    config: &tokio_postgres::Config,
    channel: &str,
    wake: &(impl Fn() + Send + Sync),
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
    // The connection must be polled for the LISTEN to complete, and for notifications.
    let (sent, mut listening) = tokio::sync::oneshot::channel();
    let listen = format!("LISTEN {channel}");
    tokio::spawn(async move {
        let _ = sent.send(client.batch_execute(&listen).await.map(|()| client));
    });
    let mut client = None;
    loop {
        tokio::select! {
            done = &mut listening, if client.is_none() => {
                match done {
                    Ok(Ok(c)) => client = Some(c),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Ok(()),
                }
            }
            message = std::future::poll_fn(|cx| connection.poll_message(cx)) => match message {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => wake(),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
        }
    }
}

impl Drop for PgPool {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics on an async thread; this does not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A checked-out client; goes back to the pool when dropped.
struct Pooled<'a> {
    pool: &'a PgPool,
    client: Option<tokio_postgres::Client>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &tokio_postgres::Client {
        self.client.as_ref().expect("present until drop")
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut tokio_postgres::Client {
        self.client.as_mut().expect("present until drop")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let mut state = lock(&self.pool.idle);
            if client.is_closed() {
                state.open -= 1;
            } else {
                state.idle.push(client);
            }
            self.pool.returned.notify_one();
        }
    }
}

/// The URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_string(),
        Err(_) => "(unparsable database URL)".to_string(),
    }
}
