//! The PostgreSQL backend, for several Berth replicas on one database.
//!
//! A call's transaction is one PostgreSQL transaction on a pooled
//! connection, begun at the call's first KV operation and committed before
//! its response leaves. It is made serializable the way the embedded store
//! makes it: strict two-phase locking, with PostgreSQL's advisory locks
//! (keys) and table locks (spans) as the lock table every replica shares.
//! A call locks a key it reads (shared) or writes (exclusive), and the
//! spans it lists or writes in (see [`span_tables`]), until its
//! transaction ends; each statement runs READ COMMITTED, after its
//! lock is granted, so it reads the latest committed value. Hence the same
//! contract as the embedded store, across processes: no lost update, no
//! write skew, no phantom, and a conflict is found at the KV call that
//! meets it, never at commit after the call acted outside KV.
//!
//! Why not SERIALIZABLE isolation: its snapshot is taken when the
//! transaction begins, so a call that waits for another's write, or runs
//! a long Docker action and then updates a shared counter, fails at its
//! read with a serialization error where the embedded store would have let
//! it wait and go on. Calls that act outside KV could not run again.
//!
//! A deadlock is found by PostgreSQL after `deadlock_timeout`, and the
//! call whose check found it gives way (`conflict`). Where the role may
//! set it, a call that may run again checks after 20 ms and a pinned call
//! (one that acted outside KV) after a second, so the call that gives way
//! is one that can run again, as with the embedded lock table. PostgreSQL
//! checks a wait once, so a call that may run again waits for a lock in
//! slices of 50 ms (`berth_lock`), each a new wait with a new check: when
//! a pinned call closes a cycle later, the other still gives way.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;

use super::{Ctx, JobRecord, Page, StoreError, Table, TxnError};

/// Every migration, in order; the schema's version is how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: plugin KV, host metadata, the job queue.
    r#"
    CREATE TABLE berth_kv (
        ns text NOT NULL,
        key bytea NOT NULL,
        value bytea NOT NULL,
        PRIMARY KEY (ns, key)
    );
    CREATE TABLE berth_meta (
        ns text NOT NULL,
        key text COLLATE "C" NOT NULL,
        value bytea NOT NULL,
        PRIMARY KEY (ns, key)
    );
    CREATE TABLE berth_jobs (
        plugin text NOT NULL,
        id bigint NOT NULL,
        record text NOT NULL,
        PRIMARY KEY (plugin, id)
    );
    CREATE SEQUENCE berth_job_ids;
    "#,
    // 2: the key and span locks of calls' transactions (strict two-phase
    // locking on advisory locks); each statement in a function runs after
    // the lock before it is granted, on a fresh READ COMMITTED snapshot.
    r#"
    CREATE FUNCTION berth_get(p_ns text, p_key bytea, p_lock bigint, p_exclusive boolean)
    RETURNS bytea LANGUAGE plpgsql VOLATILE AS $$
    DECLARE found bytea;
    BEGIN
        IF p_exclusive THEN
            PERFORM pg_advisory_xact_lock(p_lock);
        ELSE
            PERFORM pg_advisory_xact_lock_shared(p_lock);
        END IF;
        SELECT k.value INTO found FROM berth_kv k WHERE k.ns = p_ns AND k.key = p_key;
        RETURN found;
    END $$;

    CREATE FUNCTION berth_put(p_ns text, p_key bytea, p_value bytea, p_lock bigint, p_spans bigint[])
    RETURNS void LANGUAGE plpgsql VOLATILE AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock(p_lock);
        PERFORM pg_advisory_xact_lock(s) FROM unnest(p_spans) AS s;
        IF p_value IS NULL THEN
            DELETE FROM berth_kv k WHERE k.ns = p_ns AND k.key = p_key;
        ELSE
            INSERT INTO berth_kv AS k (ns, key, value) VALUES (p_ns, p_key, p_value)
            ON CONFLICT (ns, key) DO UPDATE SET value = EXCLUDED.value;
        END IF;
    END $$;

    CREATE FUNCTION berth_list(p_ns text, p_spans bigint[], p_from bytea, p_past boolean,
                               p_upper bytea, p_limit bigint)
    RETURNS TABLE (entry_key bytea, entry_value bytea) LANGUAGE plpgsql VOLATILE AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock_shared(s) FROM unnest(p_spans) AS s;
        IF p_upper IS NULL THEN
            RETURN QUERY SELECT k.key, k.value FROM berth_kv k
                WHERE k.ns = p_ns AND k.key >= p_from AND (NOT p_past OR k.key > p_from)
                ORDER BY k.key LIMIT p_limit;
        ELSE
            RETURN QUERY SELECT k.key, k.value FROM berth_kv k
                WHERE k.ns = p_ns AND k.key >= p_from AND (NOT p_past OR k.key > p_from)
                  AND k.key < p_upper
                ORDER BY k.key LIMIT p_limit;
        END IF;
    END $$;
    "#,
    // 3: job leases, so a job runs on one replica at a time: `lease` is the
    // claim's token (0: none), `leased_until` when it lapses (ms since the
    // epoch); `run_at` and `dead` mirror the record, for the due query.
    r#"
    ALTER TABLE berth_jobs
        ADD COLUMN run_at bigint NOT NULL DEFAULT 0,
        ADD COLUMN dead boolean NOT NULL DEFAULT false,
        ADD COLUMN lease bigint NOT NULL DEFAULT 0,
        ADD COLUMN leased_until bigint NOT NULL DEFAULT 0;
    UPDATE berth_jobs SET run_at = (record::json->>'run_at_ms')::bigint,
                          dead = (record::json->>'dead')::boolean;
    CREATE INDEX berth_jobs_due ON berth_jobs (run_at) WHERE NOT dead;
    "#,
    // 4: counters of attempts at secrets, the fleet's (see `attempts`):
    // unlogged, as the embedded store keeps them in memory; times are the
    // database's clock, one for every replica.
    r#"
    CREATE UNLOGGED TABLE berth_attempts (
        plugin text NOT NULL,
        key text NOT NULL,
        ends bigint NOT NULL,
        taken integer NOT NULL,
        PRIMARY KEY (plugin, key)
    );
    CREATE FUNCTION berth_now_ms() RETURNS bigint LANGUAGE sql VOLATILE AS
        $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;
    CREATE FUNCTION berth_take_attempt(p_plugin text, p_keys text[], p_limits integer[],
                                       p_window_ms bigint)
    RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
    DECLARE now_ms bigint;
    BEGIN
        INSERT INTO berth_attempts (plugin, key, ends, taken)
            SELECT p_plugin, k, 0, 0 FROM unnest(p_keys) AS k
            ON CONFLICT DO NOTHING;
        -- In key order, so racing attempts on shared counters never deadlock.
        PERFORM 1 FROM berth_attempts a
            WHERE a.plugin = p_plugin AND a.key = ANY(p_keys) ORDER BY a.key FOR UPDATE;
        now_ms := berth_now_ms();
        IF EXISTS (SELECT 1 FROM berth_attempts a
                   JOIN unnest(p_keys, p_limits) AS c(k, l) ON a.key = c.k
                   WHERE a.plugin = p_plugin AND a.ends > now_ms AND a.taken >= c.l) THEN
            RETURN false;
        END IF;
        UPDATE berth_attempts a
            SET taken = CASE WHEN a.ends > now_ms THEN a.taken + 1 ELSE 1 END,
                ends = CASE WHEN a.ends > now_ms THEN a.ends ELSE now_ms + p_window_ms END
            WHERE a.plugin = p_plugin AND a.key = ANY(p_keys);
        IF random() < 0.01 THEN
            DELETE FROM berth_attempts a WHERE a.ends < now_ms;
        END IF;
        RETURN true;
    END $$;
    "#,
    // 5: the replicas sharing this database (see `replicas`).
    r#"
    CREATE TABLE berth_replicas (
        id text PRIMARY KEY,
        address text NOT NULL,
        version text NOT NULL,
        started bigint NOT NULL,
        heartbeat bigint NOT NULL
    );
    "#,
    // 6: lock waits that re-check for deadlock. PostgreSQL checks a wait
    // once, after `deadlock_timeout`; a call that may run again waits in
    // slices of 50 ms, each ending in a check, so when a pinned call closes
    // a cycle later, it is still the call that may run again that gives
    // way. A pinned call waits once, until its deadline.
    r#"
    CREATE FUNCTION berth_lock(p_locks bigint[], p_exclusive boolean, p_patient boolean,
                               p_wait_ms bigint)
    RETURNS void LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        l bigint;
        deadline bigint := berth_now_ms() + greatest(p_wait_ms, 1);
        got boolean;
        waited boolean := false;
    BEGIN
        FOREACH l IN ARRAY p_locks LOOP
            IF p_exclusive THEN
                got := pg_try_advisory_xact_lock(l);
            ELSE
                got := pg_try_advisory_xact_lock_shared(l);
            END IF;
            WHILE NOT got LOOP
                IF berth_now_ms() >= deadline THEN
                    RAISE EXCEPTION 'a lock was held past this call''s deadline'
                        USING ERRCODE = 'lock_not_available';
                END IF;
                PERFORM set_config('lock_timeout', CASE WHEN p_patient
                    THEN greatest(deadline - berth_now_ms(), 1)
                    ELSE least(50, greatest(deadline - berth_now_ms(), 1)) END || 'ms', true);
                BEGIN
                    IF p_exclusive THEN
                        PERFORM pg_advisory_xact_lock(l);
                    ELSE
                        PERFORM pg_advisory_xact_lock_shared(l);
                    END IF;
                    got := true;
                EXCEPTION WHEN lock_not_available THEN
                    got := false;
                END;
                waited := true;
            END LOOP;
        END LOOP;
        IF waited THEN
            -- Later statements of the call wait until its deadline again.
            PERFORM set_config('lock_timeout',
                greatest(deadline - berth_now_ms(), 1) || 'ms', true);
        END IF;
    END $$;

    CREATE FUNCTION berth_read(p_ns text, p_key bytea, p_lock bigint, p_exclusive boolean,
                               p_patient boolean, p_wait_ms bigint)
    RETURNS bytea LANGUAGE plpgsql VOLATILE AS $$
    DECLARE found bytea;
    BEGIN
        PERFORM berth_lock(ARRAY[p_lock], p_exclusive, p_patient, p_wait_ms);
        SELECT k.value INTO found FROM berth_kv k WHERE k.ns = p_ns AND k.key = p_key;
        RETURN found;
    END $$;

    CREATE FUNCTION berth_write(p_ns text, p_key bytea, p_value bytea, p_lock bigint,
                                p_spans bigint[], p_patient boolean, p_wait_ms bigint)
    RETURNS void LANGUAGE plpgsql VOLATILE AS $$
    BEGIN
        PERFORM berth_lock(ARRAY[p_lock] || p_spans, true, p_patient, p_wait_ms);
        IF p_value IS NULL THEN
            DELETE FROM berth_kv k WHERE k.ns = p_ns AND k.key = p_key;
        ELSE
            INSERT INTO berth_kv AS k (ns, key, value) VALUES (p_ns, p_key, p_value)
            ON CONFLICT (ns, key) DO UPDATE SET value = EXCLUDED.value;
        END IF;
    END $$;

    CREATE FUNCTION berth_scan(p_ns text, p_spans bigint[], p_from bytea, p_past boolean,
                               p_upper bytea, p_limit bigint, p_patient boolean,
                               p_wait_ms bigint)
    RETURNS TABLE (entry_key bytea, entry_value bytea) LANGUAGE plpgsql VOLATILE AS $$
    BEGIN
        PERFORM berth_lock(p_spans, false, p_patient, p_wait_ms);
        RETURN QUERY SELECT * FROM berth_list(p_ns, ARRAY[]::bigint[], p_from, p_past,
                                              p_upper, p_limit);
    END $$;
    "#,
    // 7: events, the fleet's: every replica's subscribers see one
    // numbered sequence per plugin. A number is taken with its row in one
    // statement, under the plugin's row in berth_event_numbers, so numbers
    // commit in order and a reader that sees number n has seen every
    // number before it, or never will (its event was dropped). A held
    // event waits for its call's commit until `held_until`; past it, it is
    // skipped (its replica died).
    r#"
    CREATE TABLE berth_event_numbers (
        plugin text PRIMARY KEY,
        last bigint NOT NULL
    );
    CREATE TABLE berth_events (
        plugin text NOT NULL,
        seq bigint NOT NULL,
        topic text NOT NULL,
        payload bytea NOT NULL,
        closing boolean NOT NULL,
        held_until bigint,
        PRIMARY KEY (plugin, seq)
    );
    CREATE FUNCTION berth_event(p_plugin text, p_topic text, p_payload bytea,
                                p_closing boolean, p_held_until bigint)
    RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
    DECLARE n bigint;
    BEGIN
        INSERT INTO berth_event_numbers AS e (plugin, last) VALUES (p_plugin, 1)
            ON CONFLICT (plugin) DO UPDATE SET last = e.last + 1
            RETURNING e.last INTO n;
        INSERT INTO berth_events (plugin, seq, topic, payload, closing, held_until)
            VALUES (p_plugin, n, p_topic, p_payload, p_closing, p_held_until);
        PERFORM pg_notify('berth_events', p_plugin);
        RETURN n;
    END $$;
    "#,
    // 8: leases, for work one replica of the fleet does at a time (an
    // engine's event follower), with where it got to.
    r#"
    CREATE TABLE berth_leases (
        name text PRIMARY KEY,
        holder text NOT NULL,
        until bigint NOT NULL,
        cursor bigint NOT NULL
    );
    CREATE FUNCTION berth_lease(p_name text, p_holder text, p_for bigint, p_cursor bigint)
    RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        now bigint := berth_now_ms();
        old berth_leases%ROWTYPE;
    BEGIN
        SELECT * INTO old FROM berth_leases WHERE name = p_name FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO berth_leases VALUES (p_name, p_holder, now + p_for, coalesce(p_cursor, 0))
                ON CONFLICT DO NOTHING;
            IF NOT FOUND THEN
                RETURN NULL;
            END IF;
            RETURN coalesce(p_cursor, 0);
        END IF;
        IF old.holder <> p_holder AND old.until >= now THEN
            RETURN NULL;
        END IF;
        UPDATE berth_leases SET holder = p_holder, until = now + p_for,
            cursor = coalesce(p_cursor, old.cursor) WHERE name = p_name;
        -- Lapsed a minute ago or more: where its holder got to is stale.
        IF old.holder <> p_holder AND old.until < now - 60000 THEN
            RETURN 0;
        END IF;
        RETURN coalesce(p_cursor, old.cursor);
    END $$;
    "#,
    // 9: the fleet's plugin files, and what each replica serves.
    r#"
    CREATE TABLE berth_plugin_files (
        file text PRIMARY KEY,
        sha256 text,
        wasm bytea,
        at bigint NOT NULL
    );
    ALTER TABLE berth_replicas ADD COLUMN plugins text NOT NULL DEFAULT '{}';
    "#,
    // 10: an increment in one statement: the key locked as a write locks
    // it, read, added to, written; the new value as text, or why not (a
    // refusal leaves the transaction usable, so nothing is raised).
    r#"
    CREATE FUNCTION berth_increment(p_ns text, p_key bytea, p_delta bigint, p_lock bigint,
                                    p_spans bigint[], p_patient boolean, p_wait_ms bigint)
    RETURNS text LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        found bytea;
        shown text;
        total numeric;
    BEGIN
        PERFORM berth_lock(ARRAY[p_lock] || p_spans, true, p_patient, p_wait_ms);
        SELECT k.value INTO found FROM berth_kv k WHERE k.ns = p_ns AND k.key = p_key;
        IF found IS NULL THEN
            total := p_delta;
        ELSE
            -- Bytes past ASCII come out as backslash escapes: refused.
            shown := encode(found, 'escape');
            IF shown !~ '^\s*[+-]?[0-9]+\s*$' THEN
                RETURN 'not a decimal integer';
            END IF;
            total := btrim(shown, E' \t\n\r\f' || chr(11))::numeric;
            IF total NOT BETWEEN -9223372036854775808 AND 9223372036854775807 THEN
                RETURN 'not a decimal integer';
            END IF;
            total := total + p_delta;
        END IF;
        IF total NOT BETWEEN -9223372036854775808 AND 9223372036854775807 THEN
            RETURN 'overflows';
        END IF;
        INSERT INTO berth_kv AS k (ns, key, value)
            VALUES (p_ns, p_key, convert_to(total::text, 'UTF8'))
            ON CONFLICT (ns, key) DO UPDATE SET value = EXCLUDED.value;
        RETURN total::text;
    END $$;
    "#,
    // 11: span locks two writes never share. A write takes ROW EXCLUSIVE
    // on the table of each directory its key is in, a listing SHARE on
    // its prefix's: PostgreSQL's table lock modes give the three-way rule
    // spans want (writes share with writes, listings with listings, and
    // one waits for the other), where advisory locks have two modes and
    // two writes met on one stripe in 16 (a wait, or a deadlock between
    // calls that could not run again). Directories hash onto
    // [`SPAN_TABLES`] empty tables, so a listing may wait needlessly for a
    // write in another directory, never a write for a write. Replicas
    // older than this migration keep their stripes: run one version at a
    // time across it.
    r#"
    CREATE SCHEMA berth_spans;
    DO $$
    BEGIN
        FOR i IN 0..255 LOOP
            EXECUTE format('CREATE TABLE berth_spans.s%s () WITH (autovacuum_enabled = false)', i);
        END LOOP;
    END $$;

    -- Lock each of `p_tables` (SHARE for a listing, else ROW EXCLUSIVE),
    -- waiting as berth_lock does.
    CREATE FUNCTION berth_lock_spans(p_tables integer[], p_listing boolean,
                                     p_patient boolean, p_wait_ms bigint)
    RETURNS void LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        t integer;
        mode text := CASE WHEN p_listing THEN 'SHARE' ELSE 'ROW EXCLUSIVE' END;
        deadline bigint := berth_now_ms() + greatest(p_wait_ms, 1);
        got boolean;
        waited boolean := false;
    BEGIN
        -- Usually free: all at once, in one subtransaction.
        BEGIN
            FOREACH t IN ARRAY p_tables LOOP
                EXECUTE format('LOCK TABLE berth_spans.s%s IN %s MODE NOWAIT', t, mode);
            END LOOP;
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
        FOREACH t IN ARRAY p_tables LOOP
            got := false;
            WHILE NOT got LOOP
                IF berth_now_ms() >= deadline THEN
                    RAISE EXCEPTION 'a lock was held past this call''s deadline'
                        USING ERRCODE = 'lock_not_available';
                END IF;
                PERFORM set_config('lock_timeout', CASE WHEN p_patient
                    THEN greatest(deadline - berth_now_ms(), 1)
                    ELSE least(50, greatest(deadline - berth_now_ms(), 1)) END || 'ms', true);
                BEGIN
                    EXECUTE format('LOCK TABLE berth_spans.s%s IN %s MODE', t, mode);
                    got := true;
                EXCEPTION WHEN lock_not_available THEN
                    got := false;
                END;
                waited := true;
            END LOOP;
        END LOOP;
        IF waited THEN
            PERFORM set_config('lock_timeout',
                greatest(deadline - berth_now_ms(), 1) || 'ms', true);
        END IF;
    END $$;

    CREATE FUNCTION berth_write(p_ns text, p_key bytea, p_value bytea, p_lock bigint,
                                p_tables integer[], p_patient boolean, p_wait_ms bigint)
    RETURNS void LANGUAGE plpgsql VOLATILE AS $$
    BEGIN
        PERFORM berth_lock(ARRAY[p_lock], true, p_patient, p_wait_ms);
        PERFORM berth_lock_spans(p_tables, false, p_patient, p_wait_ms);
        IF p_value IS NULL THEN
            DELETE FROM berth_kv k WHERE k.ns = p_ns AND k.key = p_key;
        ELSE
            INSERT INTO berth_kv AS k (ns, key, value) VALUES (p_ns, p_key, p_value)
            ON CONFLICT (ns, key) DO UPDATE SET value = EXCLUDED.value;
        END IF;
    END $$;

    CREATE FUNCTION berth_increment(p_ns text, p_key bytea, p_delta bigint, p_lock bigint,
                                    p_tables integer[], p_patient boolean, p_wait_ms bigint)
    RETURNS text LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        found bytea;
        shown text;
        total numeric;
    BEGIN
        PERFORM berth_lock(ARRAY[p_lock], true, p_patient, p_wait_ms);
        PERFORM berth_lock_spans(p_tables, false, p_patient, p_wait_ms);
        SELECT k.value INTO found FROM berth_kv k WHERE k.ns = p_ns AND k.key = p_key;
        IF found IS NULL THEN
            total := p_delta;
        ELSE
            -- Bytes past ASCII come out as backslash escapes: refused.
            shown := encode(found, 'escape');
            IF shown !~ '^\s*[+-]?[0-9]+\s*$' THEN
                RETURN 'not a decimal integer';
            END IF;
            total := btrim(shown, E' \t\n\r\f' || chr(11))::numeric;
            IF total NOT BETWEEN -9223372036854775808 AND 9223372036854775807 THEN
                RETURN 'not a decimal integer';
            END IF;
            total := total + p_delta;
        END IF;
        IF total NOT BETWEEN -9223372036854775808 AND 9223372036854775807 THEN
            RETURN 'overflows';
        END IF;
        INSERT INTO berth_kv AS k (ns, key, value)
            VALUES (p_ns, p_key, convert_to(total::text, 'UTF8'))
            ON CONFLICT (ns, key) DO UPDATE SET value = EXCLUDED.value;
        RETURN total::text;
    END $$;

    CREATE FUNCTION berth_scan(p_ns text, p_tables integer[], p_from bytea, p_past boolean,
                               p_upper bytea, p_limit bigint, p_patient boolean,
                               p_wait_ms bigint)
    RETURNS TABLE (entry_key bytea, entry_value bytea) LANGUAGE plpgsql VOLATILE AS $$
    BEGIN
        PERFORM berth_lock_spans(p_tables, true, p_patient, p_wait_ms);
        RETURN QUERY SELECT * FROM berth_list(p_ns, ARRAY[]::bigint[], p_from, p_past,
                                              p_upper, p_limit);
    END $$;
    "#,
];

/// Connections kept for the host's own statements, beside the pool size.
const HOST_POOL: usize = 4;

/// The advisory lock replicas take while migrating ("berth" in ASCII).
const MIGRATION_LOCK: i64 = 0x0062_6572_7468;

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://...` or `postgresql://...`, or libpq's `key=value` form.
    pub url: String,
    /// Used when the URL has none.
    pub password: Option<String>,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    /// Extra CA certificates (PEM) for TLS to the database; the public
    /// roots are always trusted.
    pub tls_ca: PathBuf,
}

pub(super) struct Postgres {
    /// Connections for calls' transactions, each held for its call.
    pool: Pool,
    /// Connections for the host's own short statements (metadata,
    /// sequences, jobs): never waiting behind calls that hold the first
    /// pool while they ask for a sequence number.
    host: Pool,
    /// The role may set `deadlock_timeout` per transaction.
    tunable: bool,
    /// Where it is, for logs (no password).
    pub shown: String,
    /// For connections of their own (LISTEN): the settings, and TLS
    /// unless the database is on a unix socket.
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

fn unavailable(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(what.to_string())
}

/// A database error as a store error: unreachable (no answer, or the
/// server is shutting down, starting, or out of connections: try again
/// later) or failing.
fn store_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let passing = code.starts_with("08") // connection exceptions
                || code.starts_with("57P") // shutting down, crashed, starting
                || code == "53300"; // too many connections
            let what = format!("{code}: {}", db.message());
            if passing {
                unavailable(format!("the store is unavailable: {what}"))
            } else {
                StoreError::Storage(what)
            }
        }
        None => unavailable(format!("the store is unreachable: {e}")),
    }
}

/// A database error met inside a call's transaction.
fn txn_error(e: tokio_postgres::Error) -> TxnError {
    let code = e.code().cloned();
    if code == Some(SqlState::T_R_SERIALIZATION_FAILURE)
        || code == Some(SqlState::T_R_DEADLOCK_DETECTED)
    {
        return TxnError::Conflict(
            "a concurrent call changed what this one read or wrote; this call's \
             transaction was rolled back: run the call again"
                .into(),
        );
    }
    if code == Some(SqlState::LOCK_NOT_AVAILABLE) || code == Some(SqlState::QUERY_CANCELED) {
        return TxnError::Conflict(
            "a key stayed locked by another call until this call's deadline; this call's \
             transaction was rolled back: run the call again"
                .into(),
        );
    }
    TxnError::Store(store_error(e))
}

fn tls(ca: &std::path::Path) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if !ca.as_os_str().is_empty() {
        let pem = std::fs::read(ca)
            .map_err(|e| StoreError::Storage(format!("cannot read {}: {e}", ca.display())))?;
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            let cert = cert.map_err(|e| {
                StoreError::Storage(format!("{} is not PEM certificates: {e}", ca.display()))
            })?;
            roots.add(cert).map_err(|e| {
                StoreError::Storage(format!("a certificate in {}: {e}", ca.display()))
            })?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Storage(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The URL without its password, for logs and `berth config`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url
            .split_whitespace()
            .map(|kv| match kv.split_once('=') {
                Some(("password", _)) => "password=***".to_string(),
                _ => kv.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ");
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{name}:***@{host}"),
            None => format!("{user}@{host}"),
        },
        None => authority.to_string(),
    };
    let mut path = path.to_string();
    if let Some(at) = path.find("password=") {
        let end = path[at..].find('&').map_or(path.len(), |e| at + e);
        path.replace_range(at..end, "password=***");
    }
    format!("{scheme}://{authority}{path}")
}

impl Postgres {
    /// Connect, then bring the schema up to date under an advisory lock, so
    /// replicas starting together do not race.
    pub async fn connect(options: &PgOptions) -> Result<Postgres, StoreError> {
        let shown = redact(&options.url);
        let mut config: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|e| StoreError::Storage(format!("the store URL {shown} is invalid: {e}")))?;
        if config.get_password().is_none()
            && let Some(password) = &options.password
        {
            config.password(password);
        }
        if config.get_application_name().is_none() {
            config.application_name("berth");
        }
        config.connect_timeout(options.connect_timeout);
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        // TLS is for the network; a unix socket is local (and has no name
        // to check a certificate against).
        let local = config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)));
        let pool = |size: usize| {
            let manager = if local {
                Manager::from_config(
                    config.clone(),
                    tokio_postgres::NoTls,
                    manager_config.clone(),
                )
            } else {
                Manager::from_config(
                    config.clone(),
                    tls(&options.tls_ca)?,
                    manager_config.clone(),
                )
            };
            Pool::builder(manager)
                .max_size(size)
                .runtime(Runtime::Tokio1)
                .create_timeout(Some(options.connect_timeout))
                .build()
                .map_err(|e| StoreError::Storage(e.to_string()))
        };
        let mut pg = Postgres {
            pool: pool(options.pool_size.max(1))?,
            host: pool(HOST_POOL)?,
            shown,
            tunable: false,
            tls: if local {
                None
            } else {
                Some(tls(&options.tls_ca)?)
            },
            config,
        };
        pg.migrate().await?;
        pg.tunable = pg.may_set_deadlock_timeout().await;
        Ok(pg)
    }

    /// A connection for the host's own statement.
    async fn client(&self) -> Result<Object, StoreError> {
        self.host
            .get()
            .await
            .map_err(|e| unavailable(format!("the store is unreachable: {e}")))
    }

    /// A connection for a call's transaction.
    async fn txn_client(&self) -> Result<Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| unavailable(format!("the store is unreachable: {e}")))
    }

    /// Whether this role may set `deadlock_timeout` (a superuser, or one
    /// granted it); if not, every call checks after the server's setting and
    /// the call that gives way in a deadlock may be one that acted outside
    /// KV (it answers 503).
    async fn may_set_deadlock_timeout(&self) -> bool {
        let Ok(client) = self.client().await else {
            return false;
        };
        let tried = client
            .batch_execute("SET deadlock_timeout = '20ms'; RESET deadlock_timeout")
            .await;
        if let Err(e) = &tried {
            tracing::warn!(
                error = %e,
                "this store role may not set deadlock_timeout: deadlocks are found after the \
                 server's setting, and may roll back calls that cannot run again \
                 (GRANT SET ON PARAMETER deadlock_timeout to the role)"
            );
        }
        tried.is_ok()
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(store_error)?;
        let migrated = self.migrate_locked(&client).await;
        let unlocked = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        migrated?;
        unlocked.map_err(store_error)?;
        Ok(())
    }

    async fn migrate_locked(&self, client: &Object) -> Result<(), StoreError> {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS berth_schema (
                    version integer PRIMARY KEY,
                    applied timestamptz NOT NULL DEFAULT now()
                )",
            )
            .await
            .map_err(store_error)?;
        let row = client
            .query_one("SELECT coalesce(max(version), 0) FROM berth_schema", &[])
            .await
            .map_err(store_error)?;
        let at = row.get::<_, i32>(0) as usize;
        if at > MIGRATIONS.len() {
            tracing::warn!(
                schema = at,
                known = MIGRATIONS.len(),
                "the store's schema is newer than this Berth (a rolling upgrade?); serving on it"
            );
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(at) {
            let version = i as i32 + 1;
            let script = format!(
                "BEGIN; {sql}; INSERT INTO berth_schema (version) VALUES ({version}); COMMIT;"
            );
            if let Err(e) = client.batch_execute(&script).await {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(store_error(e));
            }
            tracing::info!(version, "store schema migrated");
        }
        Ok(())
    }

    fn table(table: Table) -> &'static str {
        match table {
            Table::Kv => "berth_kv",
            Table::Meta => "berth_meta",
            Table::Jobs => "berth_jobs",
        }
    }

    pub async fn meta_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT value FROM berth_meta WHERE ns = $1 AND key = $2",
                &[&ns, &key],
            )
            .await
            .map_err(store_error)?;
        Ok(row.map(|r| r.get(0)))
    }

    pub async fn meta_set(&self, ns: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO berth_meta (ns, key, value) VALUES ($1, $2, $3)
                 ON CONFLICT (ns, key) DO UPDATE SET value = EXCLUDED.value",
                &[&ns, &key, &value],
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Store `value` unless the key has one: the value stored either way.
    pub async fn meta_set_once(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let client = self.client().await?;
        let made = client
            .query_opt(
                "INSERT INTO berth_meta (ns, key, value) VALUES ($1, $2, $3)
                 ON CONFLICT (ns, key) DO NOTHING RETURNING value",
                &[&ns, &key, &value],
            )
            .await
            .map_err(store_error)?;
        if let Some(row) = made {
            return Ok(row.get(0));
        }
        // Another made it first; this statement's snapshot sees it.
        let row = client
            .query_one(
                "SELECT value FROM berth_meta WHERE ns = $1 AND key = $2",
                &[&ns, &key],
            )
            .await
            .map_err(store_error)?;
        Ok(row.get(0))
    }

    pub async fn meta_delete(&self, ns: &str, key: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM berth_meta WHERE ns = $1 AND key = $2",
                &[&ns, &key],
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    pub async fn meta_list(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT key, value FROM berth_meta WHERE ns = $1 ORDER BY key",
                &[&ns],
            )
            .await
            .map_err(store_error)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Reserve the next `block` numbers of sequence `key` in `ns` (kept in
    /// host metadata as a decimal): the first of them. Atomic across
    /// replicas.
    pub async fn reserve(&self, ns: &str, key: &str, block: u64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let block = block as i64;
        let row = client
            .query_one(
                "INSERT INTO berth_meta (ns, key, value) VALUES ($1, $2, convert_to($3::bigint::text, 'UTF8'))
                 ON CONFLICT (ns, key) DO UPDATE SET value = convert_to(
                     (convert_from(berth_meta.value, 'UTF8')::bigint + $3::bigint)::text, 'UTF8')
                 RETURNING convert_from(value, 'UTF8')::bigint",
                &[&ns, &key, &block],
            )
            .await
            .map_err(store_error)?;
        let limit: i64 = row.get(0);
        Ok((limit - block) as u64)
    }

    /// Every stored job record.
    pub async fn jobs(&self) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT record FROM berth_jobs ORDER BY id", &[])
            .await
            .map_err(store_error)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub async fn job(&self, plugin: &str, id: u64) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT record FROM berth_jobs WHERE plugin = $1 AND id = $2",
                &[&plugin, &(id as i64)],
            )
            .await
            .map_err(store_error)?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Replace a job's record, its lease ended. With `lease`, only while
    /// that claim still holds the job (a replica that lost it to another
    /// records nothing).
    pub async fn put_job(&self, job: &JobRecord, lease: Option<u64>) -> Result<(), StoreError> {
        let record = serde_json::to_string(job).map_err(|e| StoreError::Storage(e.to_string()))?;
        let client = self.client().await?;
        let (id, run_at) = (job.id as i64, job.run_at_ms as i64);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [&job.plugin, &id, &record, &run_at, &job.dead];
        match lease {
            None => client
                .execute(
                    "INSERT INTO berth_jobs (plugin, id, record, run_at, dead) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (plugin, id) DO UPDATE SET record = EXCLUDED.record,
                         run_at = EXCLUDED.run_at, dead = EXCLUDED.dead, lease = 0, leased_until = 0",
                    &params,
                )
                .await,
            Some(token) => client
                .execute(
                    "UPDATE berth_jobs SET record = $3, run_at = $4, dead = $5, lease = 0, leased_until = 0
                     WHERE plugin = $1 AND id = $2 AND lease = $6",
                    &[params.as_slice(), &[&(token as i64)]].concat(),
                )
                .await,
        }
        .map_err(store_error)?;
        Ok(())
    }

    /// Claim job `id` of `plugin` with lease `token` until `until_ms`,
    /// unless it is dead, gone, or another claim on it has not lapsed: its
    /// record if claimed. Racing claims serialise on the row, and the
    /// second finds the first's lease.
    pub async fn claim_job(
        &self,
        plugin: &str,
        id: u64,
        token: u64,
        until_ms: u64,
    ) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "UPDATE berth_jobs SET lease = $3, leased_until = $4
                 WHERE plugin = $1 AND id = $2 AND NOT dead AND leased_until < $5
                 RETURNING record",
                &[
                    &plugin,
                    &(id as i64),
                    &(token as i64),
                    &(until_ms as i64),
                    &(super::now_ms() as i64),
                ],
            )
            .await
            .map_err(store_error)?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Jobs due by `by_ms` that no replica holds: queued on another
    /// replica, or left by one that died mid-job.
    pub async fn due_jobs(&self, by_ms: u64) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT plugin, id, run_at FROM berth_jobs
                 WHERE NOT dead AND run_at <= $1 AND leased_until < $2
                 ORDER BY run_at LIMIT 256",
                &[&(by_ms as i64), &(super::now_ms() as i64)],
            )
            .await
            .map_err(store_error)?;
        Ok(rows
            .iter()
            .map(|r| {
                let (id, run_at): (i64, i64) = (r.get(1), r.get(2));
                (r.get(0), id as u64, run_at as u64)
            })
            .collect())
    }

    /// See `Store::take_attempt`.
    pub async fn take_attempt(
        &self,
        plugin: &str,
        counters: &[(String, u32)],
        window: Duration,
    ) -> Result<bool, StoreError> {
        // Rows are locked in key order, so two attempts naming the same
        // counters in another order cannot deadlock.
        let mut counters: Vec<&(String, u32)> = counters.iter().collect();
        counters.sort();
        let keys: Vec<&str> = counters.iter().map(|(k, _)| k.as_str()).collect();
        let limits: Vec<i32> = counters
            .iter()
            .map(|(_, l)| (*l).min(i32::MAX as u32) as i32)
            .collect();
        let window_ms = window.as_millis() as i64;
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT berth_take_attempt($1, $2, $3, $4)",
                &[&plugin, &keys, &limits, &window_ms],
            )
            .await
            .map_err(store_error)?;
        Ok(row.get(0))
    }

    /// See `Store::attempt_passed`.
    pub async fn attempt_passed(&self, plugin: &str, keys: &[String]) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE berth_attempts SET taken = greatest(taken - 1, 0)
                 WHERE plugin = $1 AND key = ANY($2) AND ends > berth_now_ms()",
                &[&plugin, &keys],
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Record `me`'s beat: how many replicas beat within `alive_for`.
    /// Replicas gone a day are forgotten.
    pub async fn replica_beat(
        &self,
        me: &super::ReplicaRecord<'_>,
        alive_for: Duration,
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO berth_replicas (id, address, version, started, heartbeat, plugins)
                 VALUES ($1, $2, $3, $4, berth_now_ms(), $5)
                 ON CONFLICT (id) DO UPDATE SET heartbeat = berth_now_ms(),
                     address = EXCLUDED.address, version = EXCLUDED.version,
                     plugins = EXCLUDED.plugins",
                &[
                    &me.id,
                    &me.address,
                    &me.version,
                    &(me.started_ms as i64),
                    &me.plugins,
                ],
            )
            .await
            .map_err(store_error)?;
        let row = client
            .query_one(
                "WITH gone AS (DELETE FROM berth_replicas WHERE heartbeat < berth_now_ms() - 86400000)
                 SELECT count(*) FROM berth_replicas WHERE heartbeat > berth_now_ms() - $1",
                &[&(alive_for.as_millis() as i64)],
            )
            .await
            .map_err(store_error)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Number `plugin`'s event and keep it: sent now, or held until
    /// `held_until` (ms) for its call's commit.
    pub async fn event(
        &self,
        plugin: &str,
        topic: &str,
        payload: &[u8],
        closing: bool,
        held_until: Option<u64>,
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let held = held_until.map(|h| h as i64);
        let row = client
            .query_one(
                "SELECT berth_event($1, $2, $3, $4, $5)",
                &[&plugin, &topic, &payload, &closing, &held],
            )
            .await
            .map_err(store_error)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Take or keep lease `name` for `holder` (see [`super::Store::lease`]).
    pub async fn lease(
        &self,
        name: &str,
        holder: &str,
        lease: Duration,
        cursor: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT berth_lease($1, $2, $3, $4)",
                &[&name, &holder, &(lease.as_millis() as i64), &cursor],
            )
            .await
            .map_err(store_error)?;
        Ok(row.get(0))
    }

    /// A held event's call committed (`send`) or rolled back.
    pub async fn event_settled(
        &self,
        plugin: &str,
        seq: u64,
        send: bool,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let sql = if send {
            "WITH e AS (UPDATE berth_events SET held_until = NULL WHERE plugin = $1 AND seq = $2)
             SELECT pg_notify('berth_events', $1)"
        } else {
            "WITH e AS (DELETE FROM berth_events WHERE plugin = $1 AND seq = $2)
             SELECT pg_notify('berth_events', $1)"
        };
        client
            .execute(sql, &[&plugin, &(seq as i64)])
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Each plugin with events, and the last number it gave.
    pub async fn event_heads(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT plugin, last FROM berth_event_numbers", &[])
            .await
            .map_err(store_error)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    /// `plugin`'s events numbered after `after` and up to `upto`, in order,
    /// at most `limit`.
    pub async fn events_after(
        &self,
        plugin: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<super::StoredEvent>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT seq, topic, payload, closing, held_until FROM berth_events
                 WHERE plugin = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4",
                &[&plugin, &(after as i64), &(upto as i64), &(limit as i64)],
            )
            .await
            .map_err(store_error)?;
        Ok(rows
            .iter()
            .map(|r| super::StoredEvent {
                seq: r.get::<_, i64>(0) as u64,
                topic: r.get(1),
                payload: r.get(2),
                closing: r.get(3),
                held_until: r.get::<_, Option<i64>>(4).map(|h| h as u64),
            })
            .collect())
    }

    /// Forget each plugin's events but its last `keep`.
    pub async fn events_trim(&self, keep: u64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM berth_events e USING berth_event_numbers n
                 WHERE e.plugin = n.plugin AND e.seq <= n.last - $1",
                &[&(keep as i64)],
            )
            .await
            .map_err(store_error)
    }

    /// A connection of its own that listens for new events.
    pub async fn event_wakeups(&self) -> Result<super::Wakeups, StoreError> {
        let (wake, woken) = tokio::sync::mpsc::channel(1);
        let client = match &self.tls {
            None => {
                let (client, conn) = self
                    .config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(store_error)?;
                tokio::spawn(forward_notifications(conn, wake));
                client
            }
            Some(tls) => {
                let (client, conn) = self
                    .config
                    .connect(tls.clone())
                    .await
                    .map_err(store_error)?;
                tokio::spawn(forward_notifications(conn, wake));
                client
            }
        };
        client
            .batch_execute("LISTEN berth_events")
            .await
            .map_err(store_error)?;
        Ok(super::Wakeups {
            woken,
            _client: client,
        })
    }

    /// The replicas alive within `alive_for`: (id, address, version,
    /// plugins served as JSON text), by id.
    pub async fn replicas(
        &self,
        alive_for: Duration,
    ) -> Result<Vec<(String, String, String, String)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, address, version, plugins FROM berth_replicas
                 WHERE heartbeat > berth_now_ms() - $1 ORDER BY id",
                &[&(alive_for.as_millis() as i64)],
            )
            .await
            .map_err(store_error)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    /// The fleet's plugin files: (file name, sha256; None once removed).
    pub async fn plugin_files(&self) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT file, sha256 FROM berth_plugin_files", &[])
            .await
            .map_err(store_error)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// One of the fleet's plugin files: (sha256, bytes), if it has it.
    pub async fn plugin_file(&self, file: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT sha256, wasm FROM berth_plugin_files WHERE file = $1 AND sha256 IS NOT NULL",
                &[&file],
            )
            .await
            .map_err(store_error)?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Put `file` in the fleet's set (with its sha256 and bytes), or mark
    /// it removed (None).
    pub async fn put_plugin_file(
        &self,
        file: &str,
        content: Option<(&str, &[u8])>,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let (sha, wasm) = content.unzip();
        client
            .execute(
                "INSERT INTO berth_plugin_files (file, sha256, wasm, at)
                 VALUES ($1, $2, $3, berth_now_ms())
                 ON CONFLICT (file) DO UPDATE SET sha256 = EXCLUDED.sha256,
                     wasm = EXCLUDED.wasm, at = EXCLUDED.at",
                &[&file, &sha, &wasm],
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    pub async fn replica_leave(&self, id: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM berth_replicas WHERE id = $1", &[&id])
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Every entry of `table`, for `berth store copy`: (namespace, key,
    /// value), jobs as their JSON record.
    pub async fn dump(&self, table: Table) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        let client = self.client().await?;
        let sql = match table {
            Table::Kv => {
                "SELECT ns, convert_from(key, 'UTF8'), value FROM berth_kv ORDER BY ns, key"
            }
            Table::Meta => "SELECT ns, key, value FROM berth_meta ORDER BY ns, key",
            Table::Jobs => {
                "SELECT plugin, lpad(id::text, 20, '0'), convert_to(record, 'UTF8') FROM berth_jobs ORDER BY plugin, id"
            }
        };
        let rows = client.query(sql, &[]).await.map_err(store_error)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Write entries into `table` (for `berth store copy`), in one
    /// transaction; the job id sequence moves past every id written.
    pub async fn load(
        &self,
        table: Table,
        entries: &[(String, String, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        let name = Self::table(table);
        for (ns, key, value) in entries {
            match table {
                Table::Kv => tx
                    .execute(
                        "INSERT INTO berth_kv (ns, key, value) VALUES ($1, $2, $3)
                         ON CONFLICT (ns, key) DO UPDATE SET value = EXCLUDED.value",
                        &[ns, &key.as_bytes(), value],
                    )
                    .await
                    .map(drop),
                Table::Meta => tx
                    .execute(
                        "INSERT INTO berth_meta (ns, key, value) VALUES ($1, $2, $3)
                         ON CONFLICT (ns, key) DO UPDATE SET value = EXCLUDED.value",
                        &[ns, key, value],
                    )
                    .await
                    .map(drop),
                Table::Jobs => {
                    let id: i64 = key.parse().map_err(|_| {
                        StoreError::Storage(format!("job key `{key}` in {name} is not an id"))
                    })?;
                    let record = String::from_utf8_lossy(value);
                    let job = super::parse_job(value).ok_or_else(|| {
                        StoreError::Storage(format!("job {id} of {ns} is not a job record"))
                    })?;
                    tx.execute(
                        "INSERT INTO berth_jobs (plugin, id, record, run_at, dead)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (plugin, id) DO UPDATE SET record = EXCLUDED.record,
                             run_at = EXCLUDED.run_at, dead = EXCLUDED.dead,
                             lease = 0, leased_until = 0",
                        &[
                            ns,
                            &id,
                            &record.as_ref(),
                            &(job.run_at_ms as i64),
                            &job.dead,
                        ],
                    )
                    .await
                    .map(drop)
                }
            }
            .map_err(store_error)?;
        }
        if table == Table::Jobs {
            tx.batch_execute(
                "SELECT setval('berth_job_ids', greatest(
                    (SELECT coalesce(max(id), 0) FROM berth_jobs) + 1,
                    (SELECT last_value FROM berth_job_ids)), false)",
            )
            .await
            .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)
    }
}

/// The smallest byte string greater than every string starting with
/// `prefix`; none if there is none (an empty or all-0xff prefix).
fn past_prefix(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// An advisory lock's number: FNV-1a of `parts`, each ended by a 0 byte.
/// Two names with one number only make calls wait for each other needlessly.
fn lock_id(parts: &[&[u8]]) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(&[0]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash as i64
}

/// The advisory lock that conflicted calls of namespace `ns` take turns on.
fn turn_key(ns: &str) -> i64 {
    lock_id(&[b"turn", ns.as_bytes()])
}

/// The lock on one key: shared to read it, exclusive to write it.
fn key_lock(ns: &str, key: &str) -> i64 {
    lock_id(&[b"key", ns.as_bytes(), key.as_bytes()])
}

/// How many tables the span locks of every namespace hash onto
/// (migration 11 makes them).
const SPAN_TABLES: u64 = 256;

/// The table holding directory `directory`'s span lock.
fn span_table(ns: &str, directory: &str) -> i32 {
    (lock_id(&[b"span", ns.as_bytes(), directory.as_bytes()]) as u64 % SPAN_TABLES) as i32
}

/// The span locks a write of `key` takes (ROW EXCLUSIVE, which writes
/// share): the table of each directory the key is in (the empty prefix,
/// and each prefix of it ending in `/`), each once. A listing takes its
/// prefix's directory's table SHARE (see [`listing_tables`]), and that
/// directory is one of these for every key the listing may hold. So a
/// write waits for a listing that covers its key, a listing for the writes
/// in its span, and two writes never for each other.
fn span_tables(ns: &str, key: &str) -> Vec<i32> {
    let mut tables: Vec<i32> = std::iter::once(0)
        .chain(directory_ends(key))
        .map(|end| span_table(ns, &key[..end]))
        .collect();
    tables.sort_unstable();
    tables.dedup();
    tables
}

/// Directories deeper than this share their ancestor's span lock at this
/// depth, so a key with many `/` takes a bounded number of locks (a
/// listing below it then waits for writes in the whole ancestor: correct,
/// if coarser).
const SPAN_DEPTH: usize = 16;

/// Where each directory of `key` ends (after each `/`), at most
/// [`SPAN_DEPTH`] of them.
fn directory_ends(key: &str) -> impl Iterator<Item = usize> + '_ {
    key.match_indices('/')
        .map(|(at, _)| at + 1)
        .take(SPAN_DEPTH)
}

/// The span lock a listing of `prefix` takes, SHARE: the table of its
/// directory (the prefix up to its last `/`, or its ancestor at
/// [`SPAN_DEPTH`]), which covers every key the prefix does.
fn listing_tables(ns: &str, prefix: &str) -> Vec<i32> {
    let end = directory_ends(prefix).last().unwrap_or(0);
    vec![span_table(ns, &prefix[..end])]
}

/// What is left of a call's deadline, for a lock wait (ms).
fn wait_ms(cx: &Ctx<'_>) -> i64 {
    cx.deadline
        .saturating_duration_since(Instant::now())
        .as_millis()
        .min(i64::MAX as u128) as i64
}

/// `SET LOCAL deadlock_timeout` for a call that may run again (checks soon,
/// so it is the one that gives way) or one that may not (checks late).
fn deadlock_timeout(pinned: bool) -> &'static str {
    if pinned {
        "SET LOCAL deadlock_timeout = '1s';"
    } else {
        "SET LOCAL deadlock_timeout = '20ms';"
    }
}

/// One call's transaction on PostgreSQL.
///
/// Racing calls that deadlock (fifty that each read a name, find it free,
/// and then all write it) are rolled back all but one; run again at once
/// they would meet each other again, round after round. So a call that met
/// a conflict takes its namespace's turn before it runs again: a
/// session-level advisory lock, taken before its transaction begins, held
/// until it ends. Calls that conflicted then go one at a time; calls that
/// did not conflict are not slowed.
#[derive(Default)]
pub(super) struct PgTxn {
    client: Option<Object>,
    /// A transaction is open on `client`. A call dropped while a statement
    /// is in flight leaves the connection usable: tokio-postgres reads and
    /// discards the answer, and the ROLLBACK queued after it runs next.
    open: bool,
    /// The turn to take before the next transaction begins (the call met
    /// a conflict).
    turn: Option<i64>,
    /// The turn is held (on `client`'s session).
    holding: bool,
    /// This transaction's deadlock check waits long (it acted outside KV).
    patient: bool,
}

impl PgTxn {
    /// The connection with a transaction open on it, begun now if it is not
    /// yet: READ COMMITTED (the locks make it serializable), lock waits
    /// ending at the call's deadline.
    async fn begun(
        &mut self,
        pg: &Postgres,
        deadline: Instant,
        pinned: bool,
    ) -> Result<&Object, TxnError> {
        let begin = self.begin_statement(pg, deadline, pinned).await?;
        let client = self.client.as_ref().expect("connected by begin_statement");
        if let Some(begin) = begin {
            client.batch_execute(&begin).await.map_err(txn_error)?;
        }
        Ok(client)
    }

    /// Connect (and take the turn, if the call has one), and say what must
    /// run before the call's next statement: the transaction's `BEGIN`, or
    /// a longer deadlock check for a call just pinned. Counted as run: the
    /// caller sends it, in the same round trip as its statement
    /// ([`pipelined`]) or alone.
    async fn begin_statement(
        &mut self,
        pg: &Postgres,
        deadline: Instant,
        pinned: bool,
    ) -> Result<Option<String>, TxnError> {
        if self.client.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let client = tokio::time::timeout(left, pg.txn_client())
                .await
                .map_err(|_| {
                    unavailable("no connection to the store was free before this call's deadline")
                })??;
            self.client = Some(client);
        }
        let client = self.client.as_ref().expect("connected above");
        if !self.open {
            let ms = deadline
                .saturating_duration_since(Instant::now())
                .as_millis()
                .clamp(1, i32::MAX as u128);
            if let Some(key) = self.turn
                && !self.holding
            {
                // lock_timeout bounds an advisory lock's wait too.
                let take = format!(
                    "SET lock_timeout = {ms}; SELECT pg_advisory_lock({key}); SET lock_timeout = 0"
                );
                client.batch_execute(&take).await.map_err(txn_error)?;
                self.holding = true;
            }
            let mut begin =
                format!("BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = {ms};");
            if pg.tunable {
                begin.push_str(deadlock_timeout(pinned));
            }
            // Open from here on: a call dropped now rolls it back.
            self.open = true;
            self.patient = pinned;
            return Ok(Some(begin));
        }
        if pinned && !self.patient && pg.tunable {
            self.patient = true;
            return Ok(Some(deadlock_timeout(true).to_string()));
        }
        Ok(None)
    }

    /// Read `key`, locking it (shared, or exclusive when the call will
    /// write it) until the transaction ends.
    pub async fn read(
        &mut self,
        pg: &Postgres,
        cx: &Ctx<'_>,
        key: &str,
        exclusive: bool,
    ) -> Result<Option<Vec<u8>>, TxnError> {
        let begin = self.begin_statement(pg, cx.deadline, cx.pinned).await?;
        let client = self.client.as_ref().expect("connected by begin_statement");
        let sql = "SELECT berth_read($1, $2, $3, $4, $5, $6)";
        let s = client.prepare_cached(sql).await.map_err(txn_error)?;
        let (lock, wait) = (key_lock(cx.ns, key), wait_ms(cx));
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
            &&**cx.ns,
            &key.as_bytes(),
            &lock,
            &exclusive,
            &cx.pinned,
            &wait,
        ];
        let row = pipelined(client, begin, client.query_one(&s, &params)).await?;
        Ok(row.get(0))
    }

    /// Write (`None`: delete) `key`, locking it exclusive and its spans
    /// shared until the transaction ends.
    pub async fn write(
        &mut self,
        pg: &Postgres,
        cx: &Ctx<'_>,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), TxnError> {
        let begin = self.begin_statement(pg, cx.deadline, cx.pinned).await?;
        let client = self.client.as_ref().expect("connected by begin_statement");
        let sql = "SELECT berth_write($1, $2, $3, $4, $5::integer[], $6, $7)";
        let s = client.prepare_cached(sql).await.map_err(txn_error)?;
        let (lock, spans, wait) = (key_lock(cx.ns, key), span_tables(cx.ns, key), wait_ms(cx));
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
            &&**cx.ns,
            &key.as_bytes(),
            &value,
            &lock,
            &spans,
            &cx.pinned,
            &wait,
        ];
        pipelined(client, begin, client.execute(&s, &params))
            .await
            .map(drop)
    }

    /// Add `delta` to the decimal integer at `key` (absent: 0) in one
    /// statement, locking it as a write does: the new value.
    pub async fn increment(
        &mut self,
        pg: &Postgres,
        cx: &Ctx<'_>,
        key: &str,
        delta: i64,
    ) -> Result<i64, TxnError> {
        let begin = self.begin_statement(pg, cx.deadline, cx.pinned).await?;
        let client = self.client.as_ref().expect("connected by begin_statement");
        let sql = "SELECT berth_increment($1, $2, $3, $4, $5::integer[], $6, $7)";
        let s = client.prepare_cached(sql).await.map_err(txn_error)?;
        let (lock, spans, wait) = (key_lock(cx.ns, key), span_tables(cx.ns, key), wait_ms(cx));
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
            &&**cx.ns,
            &key.as_bytes(),
            &delta,
            &lock,
            &spans,
            &cx.pinned,
            &wait,
        ];
        let row = pipelined(client, begin, client.query_one(&s, &params)).await?;
        let answer: String = row.get(0);
        match answer.parse() {
            Ok(value) => Ok(value),
            Err(_) if answer == "overflows" => Err(TxnError::Invalid(format!(
                "incrementing `{key}` by {delta} overflows"
            ))),
            Err(_) => Err(TxnError::Invalid(format!(
                "value at `{key}` is not a decimal integer"
            ))),
        }
    }

    /// List a span, locking it until the transaction ends: no other call
    /// can add, change or remove a key in it meanwhile.
    pub async fn list(
        &mut self,
        pg: &Postgres,
        cx: &Ctx<'_>,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, TxnError> {
        let client = self.begun(pg, cx.deadline, cx.pinned).await?;
        let (from, past) = match after {
            Some(a) if a >= prefix => (a.as_bytes(), true),
            _ => (prefix.as_bytes(), false),
        };
        let upper = past_prefix(prefix.as_bytes());
        let fetch = limit as i64 + 1;
        let sql = "SELECT entry_key, entry_value FROM berth_scan($1, $2::integer[], $3, $4, $5, $6, $7, $8)";
        let rows = match client.prepare_cached(sql).await {
            Ok(s) => {
                let (locks, wait) = (listing_tables(cx.ns, prefix), wait_ms(cx));
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
                    &&**cx.ns, &locks, &from, &past, &upper, &fetch, &cx.pinned, &wait,
                ];
                client.query(&s, &params).await
            }
            Err(e) => Err(e),
        }
        .map_err(txn_error)?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in &rows {
            let key: Vec<u8> = row.get(0);
            let key = String::from_utf8(key).map_err(|_| {
                TxnError::Store(StoreError::Storage("a stored key is not UTF-8".into()))
            })?;
            entries.push((key, row.get(1)));
        }
        let next = if entries.len() > limit {
            entries.truncate(limit);
            entries.last().map(|(k, _)| k.clone())
        } else {
            None
        };
        Ok(Page { entries, next })
    }

    /// A job id, unique across the fleet.
    pub async fn next_job_id(&mut self, pg: &Postgres, deadline: Instant) -> Result<u64, TxnError> {
        let client = self.begun(pg, deadline, false).await?;
        let row = client
            .query_one("SELECT nextval('berth_job_ids')", &[])
            .await
            .map_err(txn_error)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Take namespace `ns`'s turn before the next transaction begins.
    pub fn take_turn(&mut self, ns: &str) {
        self.turn = Some(turn_key(ns));
    }

    /// Give the turn back, once the transaction ended.
    async fn give_turn(&mut self) {
        if !self.holding {
            return;
        }
        self.holding = false;
        if let Some(client) = &self.client
            && client
                .batch_execute("SELECT pg_advisory_unlock_all()")
                .await
                .is_err()
        {
            self.detach();
        }
    }

    /// Roll back whatever is open, keeping the connection (and the turn)
    /// for the next try.
    pub async fn rollback(&mut self) {
        if self.open
            && let Some(client) = &self.client
            && client.batch_execute("ROLLBACK").await.is_err()
        {
            self.detach();
        }
        self.open = false;
    }

    fn detach(&mut self) {
        if let Some(client) = self.client.take() {
            // Closing the connection ends its transaction, and frees its
            // locks, on the server.
            drop(Object::take(client));
        }
        self.open = false;
        self.holding = false;
    }

    /// Queue `jobs`, remove the finished job `done`, and commit. A conflict
    /// found now is [`StoreError::Conflict`]; a connection lost during the
    /// commit leaves its outcome unknown, and says so.
    pub async fn commit(
        &mut self,
        pg: &Postgres,
        ns: &str,
        jobs: &[JobRecord],
        done: Option<(u64, u64)>,
        deadline: Instant,
    ) -> Result<(), StoreError> {
        if !self.open && jobs.is_empty() && done.is_none() {
            self.give_turn().await;
            return Ok(());
        }
        let as_store = |e: TxnError| match e {
            TxnError::Conflict(why) => StoreError::Conflict(why),
            TxnError::Invalid(why) => StoreError::Storage(why),
            TxnError::Store(e) => e,
        };
        let client = self.begun(pg, deadline, false).await.map_err(as_store)?;
        for job in jobs {
            let record =
                serde_json::to_string(job).map_err(|e| StoreError::Storage(e.to_string()))?;
            client
                .execute(
                    "INSERT INTO berth_jobs (plugin, id, record, run_at) VALUES ($1, $2, $3, $4)",
                    &[&ns, &(job.id as i64), &record, &(job.run_at_ms as i64)],
                )
                .await
                .map_err(|e| as_store(txn_error(e)))?;
        }
        if let Some((id, lease)) = done {
            // The job's writes commit only with its end, and only while its
            // claim holds: a job runs its writes at most once.
            let ended = client
                .execute(
                    "DELETE FROM berth_jobs WHERE plugin = $1 AND id = $2 AND lease = $3",
                    &[&ns, &(id as i64), &(lease as i64)],
                )
                .await
                .map_err(|e| as_store(txn_error(e)))?;
            if ended == 0 {
                self.rollback().await;
                self.give_turn().await;
                return Err(StoreError::Aborted(
                    "the job's lease lapsed and another replica took it; this run's writes \
                     were dropped"
                        .into(),
                ));
            }
        }
        let committed = client.batch_execute("COMMIT").await;
        self.open = false;
        self.give_turn().await;
        committed.map_err(|e| match txn_error(e) {
            TxnError::Conflict(why) => StoreError::Conflict(why),
            TxnError::Store(StoreError::Unavailable(why)) => StoreError::Unavailable(format!(
                "{why}; the store went away while this request's writes were committed: \
                 they may or may not have been kept"
            )),
            TxnError::Store(e) => e,
            TxnError::Invalid(why) => StoreError::Storage(why),
        })
    }

    /// Drop without awaiting: a transaction still open is rolled back on a
    /// task before its connection goes back to the pool.
    pub fn abandon(&mut self) {
        if !self.open && !self.holding {
            return;
        }
        let Some(client) = self.client.take() else {
            return;
        };
        let mut end = String::new();
        if self.open {
            end.push_str("ROLLBACK;");
        }
        if self.holding {
            end.push_str("SELECT pg_advisory_unlock_all();");
        }
        self.open = false;
        self.holding = false;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if client.batch_execute(&end).await.is_err() {
                        drop(Object::take(client));
                    }
                });
            }
            Err(_) => drop(Object::take(client)),
        }
    }
}

/// Run `statement` on `client`, after `begin` if there is one, in the
/// same round trip: both are sent before either answer is read (the
/// client pipelines requests it is given together).
async fn pipelined<T>(
    client: &Object,
    begin: Option<String>,
    statement: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, TxnError> {
    match begin {
        None => statement.await.map_err(txn_error),
        Some(begin) => {
            let (begun, done) =
                futures_util::future::join(client.batch_execute(&begin), statement).await;
            begun.map_err(txn_error)?;
            done.map_err(txn_error)
        }
    }
}

/// Drive a listening connection, waking `wake` at each notification, until
/// it ends.
async fn forward_notifications<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    wake: tokio::sync::mpsc::Sender<()>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                // A wake-up already waiting covers this one too.
                let _ = wake.try_send(());
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(error = %e, "the store's event listener ended");
                return;
            }
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_prefix() {
        assert_eq!(past_prefix(b"user/"), Some(b"user0".to_vec()));
        assert_eq!(past_prefix(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(past_prefix(b"\xff\xff"), None);
        assert_eq!(past_prefix(b""), None);
    }

    /// A listing's lock is among the span locks of every key it may hold,
    /// and of no key outside its directory.
    #[test]
    fn a_listing_lock_covers_its_keys() {
        let covered = |prefix: &str, key: &str| {
            let listing = listing_tables("ns", prefix);
            span_tables("ns", key).iter().any(|l| listing.contains(l))
        };
        for (prefix, key) in [
            ("user/", "user/alice"),
            ("user/al", "user/alice"),
            ("user/al", "user/al/x"),
            ("use", "user/alice"),
            ("", "a"),
            ("a/b", "a/bc/d"),
            ("run/t/", "run/t/left"),
        ] {
            assert!(covered(prefix, key), "{prefix} covers {key}");
        }
        // A key with many `/` takes a bounded number of span locks, and a
        // listing deep below the bound still covers its keys.
        let deep = "d/".repeat(200) + "leaf";
        assert!(span_tables("ns", &deep).len() <= SPAN_DEPTH + 1);
        assert!(covered(&"d/".repeat(100), &deep));
        assert!(covered(&"d/".repeat(SPAN_DEPTH), &deep));
    }

    /// Directories (of one namespace, and of several) spread over the
    /// tables, so a listing seldom waits for a write elsewhere.
    #[test]
    fn directories_spread_over_the_span_tables() {
        let mut used = std::collections::HashSet::new();
        for ns in ["commands", "stacks"] {
            for i in 0..500 {
                used.insert(span_table(ns, &format!("run/{i}/")));
            }
        }
        assert!(used.len() > SPAN_TABLES as usize * 9 / 10, "{}", used.len());
        assert!(used.iter().all(|t| (0..SPAN_TABLES as i32).contains(t)));
        assert_ne!(span_table("a", "user/"), span_table("b", "user/"));
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("postgres://berth:s3cret@db.example:5432/berth?sslmode=require"),
            "postgres://berth:***@db.example:5432/berth?sslmode=require"
        );
        assert_eq!(
            redact("postgres://postgres@%2Ftmp%2Fx/berth?password=hunter2&sslmode=disable"),
            "postgres://postgres@%2Ftmp%2Fx/berth?password=***&sslmode=disable"
        );
        assert_eq!(
            redact("host=/tmp user=berth password=hunter2"),
            "host=/tmp user=berth password=***"
        );
    }
}
