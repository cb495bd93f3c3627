"""The sqlite store: the default for `chalice local`, `make run` and the CLI.

One connection per thread, WAL so readers never wait for the writer, and
every write in a `BEGIN IMMEDIATE` transaction so writers queue on sqlite's
lock instead of failing half way. Parameterized SQL only. Beside the cars it
keeps the idempotency keys and an outbox of change events; a car's event, and
a keyed create's outcome, commit in the car's own transaction.
"""
import contextlib
import json
import os
import random
import sqlite3
import threading
import time

from chalicelib.domain import cars, events, idempotency
from chalicelib.store.base import ABSENT_ONLY, KeyClaimLost, Store, encode_outcome, now_iso

COLUMNS = ('id', 'make', 'model', 'year', 'trans', 'color',
           'make_key', 'model_key', 'trans_key', 'color_key',
           'version', 'rev', 'created_at', 'updated_at')
# A record is what reads return: the stored columns less the search keys.
RECORD = tuple(c for c in COLUMNS if not c.endswith('_key'))
_SELECT = 'SELECT %s FROM cars' % ', '.join(RECORD)

SCHEMA = ("""
CREATE TABLE IF NOT EXISTS cars (
    id TEXT PRIMARY KEY NOT NULL,
    make TEXT NOT NULL,
    model TEXT NOT NULL,
    year INTEGER NOT NULL,
    trans TEXT,
    color TEXT,
    make_key TEXT,
    model_key TEXT,
    trans_key TEXT,
    color_key TEXT,
    version INTEGER NOT NULL DEFAULT 1,
    rev TEXT NOT NULL DEFAULT '',
    created_at TEXT,
    updated_at TEXT
)""", """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL
)""", """
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    token TEXT NOT NULL,
    claimed_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    outcome TEXT
)""", """
CREATE INDEX IF NOT EXISTS idempotency_keys_expires ON idempotency_keys (expires_at)
""")

# Columns the seed's table lacks; added in place so an old cars.db keeps working.
_ADDED = {'make_key': 'TEXT', 'model_key': 'TEXT', 'trans_key': 'TEXT',
          'color_key': 'TEXT', 'version': 'INTEGER NOT NULL DEFAULT 1',
          'rev': "TEXT NOT NULL DEFAULT ''", 'created_at': 'TEXT', 'updated_at': 'TEXT'}

BUSY_TIMEOUT_MS = 30000


def _keys(fields):
    return {name + '_key': cars.search_key(fields.get(name)) for name in cars.TEXT_FILTERS}


def _record(row):
    return dict(zip(RECORD, row))


class SqliteStore(Store):

    def __init__(self, path):
        self.path = path
        self._local = threading.local()
        self._schema_lock = threading.Lock()
        self._schema_ready = False
        self._keys_swept = 0.0

    # --- connections ----------------------------------------------------------

    def connect(self):
        conn = getattr(self._local, 'conn', None)
        if conn is None:
            directory = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(directory, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves.
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000.0,
                                   isolation_level=None, check_same_thread=False)
            conn.execute('PRAGMA busy_timeout = %d' % BUSY_TIMEOUT_MS)
            # NORMAL in WAL mode survives a crash of the process (kill -9); only
            # a power loss can drop the last commits.
            conn.execute('PRAGMA synchronous = NORMAL')
            self._local.conn = conn
            if not self._schema_ready:
                self._ensure_schema(conn)
        return conn

    def _ensure_schema(self, conn):
        with self._schema_lock:
            if self._schema_ready:
                return
            # WAL is a property of the file, set once here while the other
            # threads wait: connections switching a new file to WAL together
            # can be refused at once ("database is locked") whatever the
            # busy timeout.
            conn.execute('PRAGMA journal_mode = WAL')
            with self.transaction() as c:
                for statement in SCHEMA:
                    c.execute(statement)
                have = {row[1] for row in c.execute('PRAGMA table_info(cars)')}
                missing = [name for name in _ADDED if name not in have]
                for name in missing:
                    c.execute('ALTER TABLE cars ADD COLUMN %s %s' % (name, _ADDED[name]))
                if missing:
                    self._upgrade_seed_rows(c)
                c.execute('CREATE UNIQUE INDEX IF NOT EXISTS cars_id ON cars (id)')
            self._schema_ready = True

    def _upgrade_seed_rows(self, c):
        # The seed stored every field as text; bring its rows to this schema.
        rows = c.execute('SELECT rowid, make, model, year, trans, color FROM cars').fetchall()
        now = now_iso()
        for rowid, make, model, year, trans, color in rows:
            try:
                year = int(year)
            except (TypeError, ValueError):
                pass
            keys = _keys({'make': make, 'model': model, 'trans': trans, 'color': color})
            c.execute('UPDATE cars SET year=?, make_key=?, model_key=?, trans_key=?, '
                      'color_key=?, version=1, rev=?, created_at=?, updated_at=? '
                      'WHERE rowid=?',
                      (year, keys['make_key'], keys['model_key'], keys['trans_key'],
                       keys['color_key'], cars.new_revision(), now, now, rowid))

    @contextlib.contextmanager
    def transaction(self):
        """A write transaction holding sqlite's write lock from the start."""
        conn = self.connect()
        conn.execute('BEGIN IMMEDIATE')
        try:
            yield conn
        except BaseException:
            conn.execute('ROLLBACK')
            raise
        conn.execute('COMMIT')

    def close(self):
        conn = getattr(self._local, 'conn', None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def ping(self):
        self.connect().execute('SELECT 1 FROM cars LIMIT 1').fetchall()

    # --- reads ----------------------------------------------------------------

    def get(self, car_id, conn=None):
        row = (conn or self.connect()).execute(_SELECT + ' WHERE id = ?', (car_id,)).fetchone()
        return _record(row) if row else None

    def list(self, filters, after, limit):
        where, params = [], []
        if after is not None:
            where.append('id > ?')
            params.append(after)
        for name, wanted in filters.text.items():
            if wanted is None:
                where.append('%s_key IS NULL' % name)
            else:
                where.append('%s_key = ?' % name)
                params.append(wanted)
        if filters.year_min is not None:
            where.append('year >= ?')
            params.append(filters.year_min)
        if filters.year_max is not None:
            where.append('year <= ?')
            params.append(filters.year_max)
        sql = _SELECT
        if where:
            sql += ' WHERE ' + ' AND '.join(where)
        sql += ' ORDER BY id LIMIT ?'
        params.append(limit + 1)
        rows = self.connect().execute(sql, params).fetchall()
        records = [_record(r) for r in rows[:limit]]
        # One SELECT reads every match it needs: it never stops early.
        return records, records[-1]['id'] if len(rows) > limit else None

    def count(self):
        return self.connect().execute('SELECT COUNT(*) FROM cars').fetchone()[0]

    # --- writes ---------------------------------------------------------------

    def _insert(self, c, car_id, fields, version=1, created_at=None, before=None):
        now = now_iso()
        record = dict(fields, id=car_id, version=version, rev=cars.new_revision(),
                      created_at=created_at or now, updated_at=now)
        record.update(_keys(record))
        c.execute('INSERT OR REPLACE INTO cars (%s) VALUES (%s)'
                  % (', '.join(COLUMNS), ', '.join('?' * len(COLUMNS))),
                  [record.get(col) for col in COLUMNS])
        self._record_change(c, before, record)
        return record

    def _free_id(self, c):
        # A few random probes find a free id at once while the space has room;
        # past that, one read of the taken ids makes the choice exact, so a
        # nearly full space costs one query, not a storm of retries.
        for _ in range(3):
            candidate = ''.join(random.choice(cars.ID_DIGITS) for _ in range(4))
            if c.execute('SELECT 1 FROM cars WHERE id = ?', (candidate,)).fetchone() is None:
                return candidate
        taken = {row[0] for row in c.execute('SELECT id FROM cars')}
        free = [i for i in cars.all_assignable_ids() if i not in taken]
        if not free:
            raise cars.IdSpaceExhausted()
        return random.choice(free)

    def create(self, fields, car_id=None, key_outcome=None):
        with self.transaction() as c:
            if car_id is None:
                car_id = self._free_id(c)
            elif c.execute('SELECT 1 FROM cars WHERE id = ?', (car_id,)).fetchone():
                raise cars.CarExists(car_id)
            record = self._insert(c, car_id, fields)
            if key_outcome is not None and not self._record_key_outcome(
                    c, key_outcome.key, key_outcome.token, key_outcome.outcome_for(record)):
                # Raised inside the transaction: the car is rolled back.
                raise KeyClaimLost('the claim on idempotency key %r was taken over'
                                   % key_outcome.key)
            return record

    @staticmethod
    def _check(car_id, current, expect, only_if_absent=False):
        if only_if_absent and current is not None:
            raise cars.VersionMismatch(car_id, ABSENT_ONLY % car_id)
        if expect is None:
            return
        if current is None:
            if expect == '*':
                raise cars.CarNotFound(car_id)
            raise cars.VersionMismatch(car_id)
        if expect != '*' and current['rev'] not in expect:
            raise cars.VersionMismatch(car_id)

    def update(self, car_id, changes, expect=None, only_if_absent=False):
        with self.transaction() as c:
            current = self.get(car_id, c)
            if current is None:
                raise cars.CarNotFound(car_id)
            self._check(car_id, current, expect, only_if_absent)
            fields = {name: current[name] for name in cars.FIELDS}
            fields.update(changes)
            return self._insert(c, car_id, fields, current['version'] + 1,
                                current['created_at'], current)

    def replace(self, car_id, fields, expect=None, only_if_absent=False):
        with self.transaction() as c:
            current = self.get(car_id, c)
            if only_if_absent and current is not None:
                raise cars.VersionMismatch(car_id, ABSENT_ONLY % car_id)
            if current is None and expect is not None:
                raise cars.VersionMismatch(car_id, 'car %s does not exist' % car_id)
            self._check(car_id, current, expect)
            if current is None:
                return self._insert(c, car_id, fields), True
            return self._insert(c, car_id, fields, current['version'] + 1,
                                current['created_at'], current), False

    def delete(self, car_id, expect=None, only_if_absent=False):
        with self.transaction() as c:
            current = self.get(car_id, c)
            if current is None:
                raise cars.CarNotFound(car_id)
            self._check(car_id, current, expect, only_if_absent)
            c.execute('DELETE FROM cars WHERE id = ?', (car_id,))
            self._record_change(c, current, None)
            return current

    def put_many(self, items, deadline=None):
        # One transaction: a bulk load is all or nothing, and fast (no retries,
        # so no use for the deadline).
        n = 0
        with self.transaction() as c:
            for fields in items:
                current = self.get(fields['id'], c)
                body = {name: fields.get(name) for name in cars.FIELDS}
                if current is None:
                    self._insert(c, fields['id'], body)
                else:
                    self._insert(c, fields['id'], body, current['version'] + 1,
                                 current['created_at'], current)
                n += 1
        return n

    # --- the change outbox ----------------------------------------------------------

    @staticmethod
    def _record_change(c, before, after):
        event = events.build_event(before, after, os.urandom(16).hex(), 'sqlite',
                                   None if after is not None else now_iso())
        c.execute('INSERT INTO outbox (event) VALUES (?)',
                  (json.dumps(event, separators=(',', ':'), ensure_ascii=False),))

    def changes_after(self, seq, limit=1000):
        rows = self.connect().execute(
            'SELECT seq, event FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?',
            (seq, limit)).fetchall()
        return [(row_seq, json.loads(text)) for row_seq, text in rows]

    # --- idempotency keys -----------------------------------------------------------

    # Sweeping expired keys at most this often keeps a claim to one indexed lookup.
    KEYS_SWEEP_EVERY = 60

    def claim_key(self, key, fingerprint):
        now = time.time()
        token = os.urandom(8).hex()
        with self.transaction() as c:
            if now - self._keys_swept > self.KEYS_SWEEP_EVERY:
                c.execute('DELETE FROM idempotency_keys WHERE expires_at <= ?', (now,))
                self._keys_swept = now
            row = c.execute('SELECT fingerprint, state, claimed_at, expires_at, outcome '
                            'FROM idempotency_keys WHERE key = ?', (key,)).fetchone()
            if row is not None and idempotency.decide_claim(
                    idempotency.KeyRecord(*row[:4]), fingerprint, now) == idempotency.REPLAY:
                return None, json.loads(row[4])
            c.execute('INSERT OR REPLACE INTO idempotency_keys (key, fingerprint, state, token, '
                      'claimed_at, expires_at, outcome) VALUES (?, ?, ?, ?, ?, ?, NULL)',
                      (key, fingerprint, idempotency.IN_FLIGHT, token, now,
                       now + idempotency.TTL_SECONDS))
        return token, None

    @staticmethod
    def _record_key_outcome(c, key, token, outcome):
        """Whether the outcome was recorded: only an in-flight claim with this token is.

        A takeover changed the token, and a done key is final.
        """
        return c.execute('UPDATE idempotency_keys SET state = ?, outcome = ? '
                         'WHERE key = ? AND token = ? AND state = ?',
                         (idempotency.DONE, encode_outcome(outcome), key, token,
                          idempotency.IN_FLIGHT)).rowcount == 1

    def record_key_outcome(self, key, token, outcome):
        with self.transaction() as c:
            self._record_key_outcome(c, key, token, outcome)

    def release_key(self, key, token):
        with self.transaction() as c:
            c.execute('DELETE FROM idempotency_keys WHERE key = ? AND token = ? AND state = ?',
                      (key, token, idempotency.IN_FLIGHT))

    def current_key_outcome(self, key, fingerprint):
        with self.transaction() as c:
            row = c.execute('SELECT fingerprint, state, expires_at, outcome '
                            'FROM idempotency_keys WHERE key = ?', (key,)).fetchone()
        record = None
        if row is not None:
            record = idempotency.KeyRecord(row[0], row[1], None, row[2])
        idempotency.check_replayable(record, fingerprint, time.time())
        return json.loads(row[3])
