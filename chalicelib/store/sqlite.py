"""The sqlite store: the default for `chalice local` and for the CLI.

One connection per thread (chalice local serves each connection on a thread),
WAL so readers never wait for the writer, and every write in a `BEGIN
IMMEDIATE` transaction so writers queue on sqlite's lock instead of failing
half way. Parameterized SQL only.
"""
import contextlib
import os
import random
import sqlite3
import threading

from chalicelib.domain import cars, events
from chalicelib.store.base import ABSENT_ONLY, Store, now_iso

COLUMNS = ('id', 'make', 'model', 'year', 'trans', 'color',
           'make_key', 'model_key', 'trans_key', 'color_key',
           'version', 'rev', 'created_at', 'updated_at')
# A record is what reads return: the stored columns less the search keys.
RECORD = tuple(c for c in COLUMNS if not c.endswith('_key'))
_SELECT = 'SELECT %s FROM cars' % ', '.join(RECORD)

SCHEMA = """
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
);
"""

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
    kind = 'sqlite'

    def __init__(self, path):
        self.path = path
        self._local = threading.local()
        self._schema_lock = threading.Lock()
        self._schema_ready = False
        # Reads take turns. A read is ~10 µs, but sixteen threads reading at
        # once through their own connections contend inside sqlite and on the
        # GIL it releases around each call: on the thread-per-connection server
        # with 16 keep-alive clients, taking turns raised GET throughput by half
        # and cut p50 latency by a third. In Lambda and under make run's event
        # loop (one request at a time) it is uncontended and free.
        self._read_lock = threading.Lock()

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
            conn.execute('PRAGMA journal_mode = WAL')
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
            with self.transaction() as c:
                c.execute(SCHEMA)
                # Change events, written in the same transaction as the car.
                c.execute(events.OUTBOX_SCHEMA)
                have = {row[1] for row in c.execute('PRAGMA table_info(cars)')}
                missing = [name for name in _ADDED if name not in have]
                for name in missing:
                    c.execute('ALTER TABLE cars ADD COLUMN %s %s' % (name, _ADDED[name]))
                if missing:
                    self._upgrade_seed_rows(c)
                c.execute('CREATE UNIQUE INDEX IF NOT EXISTS cars_id ON cars (id)')
                for extra in self.extra_schema():
                    c.execute(extra)
            self._schema_ready = True

    def extra_schema(self):
        """Statements for tables other modules keep in this database."""
        return []

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
        with self._read_lock:
            row = (conn or self.connect()).execute(_SELECT + ' WHERE id = ?',
                                                   (car_id,)).fetchone()
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
        with self._read_lock:
            rows = self.connect().execute(sql, params).fetchall()
        return [_record(r) for r in rows[:limit]], len(rows) > limit

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
        events.outbox_insert(c, before, record)
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

    def create(self, fields, car_id=None, also=None):
        with self.transaction() as c:
            if car_id is None:
                car_id = self._free_id(c)
            elif c.execute('SELECT 1 FROM cars WHERE id = ?', (car_id,)).fetchone():
                raise cars.CarExists(car_id)
            record = self._insert(c, car_id, fields)
            if also is not None:
                also(c, record)
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
            events.outbox_insert(c, current, None)
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
