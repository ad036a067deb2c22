#!/usr/bin/env python3
"""Times `presenced migrate` on a version 2 database (the second landing's schema) holding N
history rows for N/10 accounts, the last 1,000 unpublished: what an upgrade to schema version 3
costs, which rebuilds the history.

Usage: scripts/bench-migration.py [N] (default 1,000,000; needs target/release/presenced)"""
import os, sqlite3, subprocess, sys, tempfile, time, uuid

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'v2.db')
    c = sqlite3.connect(path, isolation_level=None)
    c.execute('PRAGMA journal_mode=WAL')
    for name in ['0001_initial.sql', '0002_state_tombstones.sql']:
        c.executescript(open(os.path.join(root, 'migrations', name)).read())
    c.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT")
    c.execute("INSERT INTO schema_migrations VALUES (1, '0001_initial.sql', 0), (2, '0002_state_tombstones.sql', 0)")
    accounts = max(n // 10, 1)
    c.execute('BEGIN')
    c.execute('INSERT INTO sweeps (sweep_id, started_at) VALUES (1, 0)')
    c.executemany(
        'INSERT INTO presence_history (history_id, event_id, user_id, seq, kind, from_state, to_state,'
        ' from_platforms, to_platforms, observed_at, sweep_id) VALUES (?,?,?,?,?,?,?,?,?,?,1)',
        ((i + 1, str(uuid.uuid4()), f'user{i % accounts}', i // accounts + 1,
          'initial' if i < accounts else 'changed', None if i < accounts else 'Online',
          'Offline', None if i < accounts else '[]', '[]', 1_700_000_000_000 + i) for i in range(n)))
    c.execute("INSERT INTO presence_current (user_id, state, platforms, seq, observed_at, changed_at)"
              " SELECT user_id, to_state, to_platforms, MAX(seq), observed_at, observed_at"
              " FROM presence_history GROUP BY user_id")
    c.execute('INSERT INTO outbox SELECT history_id, observed_at FROM presence_history WHERE history_id > ?',
              (n - 1000,))
    c.execute('COMMIT')
    c.execute('PRAGMA wal_checkpoint(TRUNCATE)')
    c.close()
    size = os.path.getsize(path) >> 20
    started = time.monotonic()
    out = subprocess.run([os.path.join(root, 'target/release/presenced'), 'migrate', '--db', path],
                         capture_output=True, text=True, check=True).stdout
    took = time.monotonic() - started
    print(out.rstrip())
    print(f'migration of a version 2 database with {n} history rows ({size} MiB): {took:.1f} s '
          f'= {took * 1e6 / n:.1f} s per million rows')
