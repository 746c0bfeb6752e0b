//! Helpers shared by the PostgreSQL integration tests.

#![allow(clippy::unwrap_used)] // tests fail by panicking

use fencelock_testkit::pg_server::PgServer;

/// Counts, from now on, the statements that write `fencelock.locks` (every acquire is
/// one; the server's own count, with a statement-level trigger and a sequence): read it
/// with [`acquires`].
pub fn count_acquires(server: &PgServer) {
    server.psql(
        "CREATE SEQUENCE public.acquires;
         CREATE FUNCTION public.count_acquire() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM nextval('public.acquires'); RETURN NULL; END $$;
         CREATE TRIGGER count_acquire AFTER INSERT ON fencelock.locks
           FOR EACH STATEMENT EXECUTE FUNCTION public.count_acquire();",
    );
}

/// The acquire statements counted since [`count_acquires`].
pub fn acquires(server: &PgServer) -> i64 {
    server
        .psql("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.acquires")
        .parse()
        .unwrap()
}
