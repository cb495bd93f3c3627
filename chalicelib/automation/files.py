"""Car files: reading CSV and JSON Lines into validated rows, listing errors, writing cars out.

Used by the bulk import, the daily export and the CLI.
"""
# csv is imported where used: the API loads this module for its event
# handlers, and its cold start should not pay for it.
import io
import json
import posixpath

from chalicelib.domain import cars

COLUMNS = ('id',) + cars.FIELDS
CSV_EXTENSIONS = ('.csv',)
JSONL_EXTENSIONS = ('.jsonl', '.ndjson')


# Spreadsheet formula injection (OWASP "CSV Injection"): Excel, LibreOffice and
# Google Sheets take a cell that starts with one of these for a formula.
FORMULA_STARTS = ('=', '+', '-', '@', '\t', '\r')


def _formula_like(cell):
    """Does `cell` start with a formula character, after any number of quotes?"""
    return cell.lstrip("'").startswith(FORMULA_STARTS)


def neutralise_cell(cell):
    """The CSV form of a text cell: a leading ' when it would be a formula.

    A cell that starts with quotes followed by a formula character gets one more,
    so `unneutralise_cell` knows that exactly one quote is always the added one.
    """
    return "'" + cell if _formula_like(cell) else cell


def unneutralise_cell(cell):
    """Undo `neutralise_cell`: drop one leading ' before (quotes and) a formula character."""
    return cell[1:] if cell.startswith("'") and _formula_like(cell) else cell


class FileError(Exception):
    """The file as a whole cannot be read (format, encoding, header)."""

    def __init__(self, message, line=None):
        super().__init__(message if line is None else 'line %d: %s' % (line, message))
        self.line = line
        self.message = message


def file_format(name):
    lower = name.lower()
    if lower.endswith(CSV_EXTENSIONS):
        return 'csv'
    if lower.endswith(JSONL_EXTENSIONS):
        return 'jsonl'
    raise FileError('unsupported file type %r: name a .csv or .jsonl (.ndjson) file'
                    % posixpath.basename(name))


def _text(data):
    if isinstance(data, str):
        return data
    try:
        return data.decode('utf-8-sig')
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b'\n') + 1
        raise FileError('not valid UTF-8 (byte %d)' % e.start, line)


def read_rows(name, data):
    """Parse a CSV or JSON Lines file into [(line number, row dict)].

    A row that cannot be parsed at all becomes (line, FileError). Raises
    FileError when the file as a whole is unreadable (type, encoding, header).
    """
    fmt = file_format(name)
    text = _text(data)
    return _csv_rows(text) if fmt == 'csv' else _jsonl_rows(text)


def _csv_rows(text):
    import csv
    reader = csv.reader(io.StringIO(text, newline=''), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise FileError('unreadable CSV header: %s' % e, 1)
    if header is None:
        return []
    header = [h.strip() for h in header]
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise FileError('unknown column(s) %s in the header; the columns are %s'
                        % (', '.join(repr(h) for h in unknown), ', '.join(COLUMNS)), 1)
    if len(set(header)) != len(header):
        raise FileError('a column is named twice in the header', 1)
    missing = [h for h in ('make', 'model', 'year') if h not in header]
    if missing:
        raise FileError('the header lacks the required column(s) %s' % ', '.join(missing), 1)
    rows = []
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return rows
        except csv.Error as e:
            rows.append((start, FileError('unreadable CSV: %s' % e)))
            continue
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            rows.append((start, FileError('has %d cells; the header has %d'
                                          % (len(cells), len(header)))))
            continue
        # The export's neutralised formulas (neutralise_cell) come back as written.
        row = dict(zip(header, (unneutralise_cell(c) for c in cells)))
        # An empty id cell means "assign one", as an absent id does in JSON.
        if row.get('id', None) is not None and row['id'].strip() == '':
            del row['id']
        rows.append((start, row))


def _jsonl_rows(text):
    rows = []
    # Records end at '\n' (or '\r\n') only: str.splitlines would also split
    # at U+2028, U+2029, U+0085 and other breaks, which JSON writes raw in a string.
    for number, line in enumerate(text.split('\n'), 1):
        if line.endswith('\r'):
            line = line[:-1]
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as e:
            rows.append((number, FileError('not valid JSON: %s' % e)))
            continue
        if not isinstance(row, dict):
            rows.append((number, FileError('must be a JSON object of car fields')))
            continue
        rows.append((number, row))
    return rows


def validate_rows(rows):
    """Split parsed rows into ([(line, fields)], [{"line", "field", "message"}])."""
    valid, errors = [], []
    for line, row in rows:
        if isinstance(row, FileError):
            errors.append({'line': line, 'field': '', 'message': row.message})
            continue
        try:
            valid.append((line, cars.validate_new(row)))
        except cars.InvalidCar as e:
            errors.extend({'line': line, 'field': err['field'], 'message': err['message']}
                          for err in e.errors)
    return valid, errors


def format_errors(errors, limit=50):
    lines = ['line %d: %s%s' % (e['line'], e['field'] + ': ' if e['field'] else '', e['message'])
             for e in errors[:limit]]
    if len(errors) > limit:
        lines.append('... and %d more' % (len(errors) - limit))
    return '\n'.join(lines)


def write_rows(out, records, fmt):
    """Write public cars to a text stream as CSV (with header) or JSON Lines.

    CSV text cells that a spreadsheet would run as a formula get a leading '
    (neutralise_cell); the CSV reader above takes it off again. JSON Lines is verbatim.
    """
    import csv
    if fmt == 'csv':
        writer = csv.writer(out, lineterminator='\n')
        writer.writerow(COLUMNS)
        for r in records:
            car = cars.public(r)
            writer.writerow(['' if car[c] is None else
                             neutralise_cell(car[c]) if isinstance(car[c], str) else car[c]
                             for c in COLUMNS])
    else:
        for r in records:
            out.write(json.dumps(cars.public(r), ensure_ascii=False, separators=(',', ':')))
            out.write('\n')
