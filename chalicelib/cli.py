"""The operators' command line, `python -m chalicelib.cli COMMAND`; Lambda never runs it.

Commands work on the configured store (CARS_STORE, CARS_DB_PATH, CARS_TABLE,
AWS_ENDPOINT_URL_DYNAMODB; see docs/api.md), or the one `--store` names.
"""
import os
import random
import sys
import time

import click

from chalicelib import config, observability
from chalicelib.automation import files
from chalicelib.automation.bulk_import import WRITE_BATCH, import_valid
from chalicelib.automation.export import all_cars
from chalicelib.domain import cars
from chalicelib import store as store_module
from chalicelib.store.base import WriteIncomplete


def _store(kind=None):
    try:
        return store_module.get_store(kind)
    except config.ConfigError as e:
        raise click.ClickException(str(e))


@click.group()
@click.option('--store', 'store_kind', type=click.Choice(config.STORES),
              help='The store to use (default: CARS_STORE, else sqlite).')
def cli(store_kind):
    """Manage the car inventory: create the store, import, export, seed, copy, events."""
    if store_kind:
        os.environ['CARS_STORE'] = store_kind
        store_module.reset()


# --- init -----------------------------------------------------------------------------

@cli.command()
def init():
    """Create the configured store if it is missing (sqlite file or DynamoDB table)."""
    kind = config.store_kind()
    if kind == 'sqlite':
        path = config.db_path()
        existed = os.path.exists(path)
        _store('sqlite').ping()
        click.echo('sqlite database %s %s' % (path, 'is ready' if existed else 'created'))
        return
    import boto3

    from chalicelib.store import table
    try:
        name = config.table_name()
    except config.ConfigError as e:
        raise click.ClickException(str(e))
    client = boto3.client('dynamodb', endpoint_url=config.dynamodb_endpoint())
    created = table.create_table(client, name)
    click.echo('DynamoDB table %s %s' % (name, 'created' if created else 'already exists'))


# --- import / export ---------------------------------------------------------------------

@cli.command('import')
@click.argument('file', type=click.Path(exists=True, dir_okay=False))
@click.option('--skip-invalid', is_flag=True,
              help='Write the valid rows and report the invalid ones, '
                   'instead of refusing the whole file.')
def import_(file, skip_invalid):
    """Import cars from FILE (.csv with a header row of field names, or .jsonl).

    The whole file is validated first. With any invalid row nothing is written
    and every error is listed by line and field, unless --skip-invalid is given.
    Rows with an id are created or replaced; rows without one get a new id.
    Running the same file again (say, after an interruption) creates no car twice.
    """
    with open(file, 'rb') as f:
        data = f.read()
    try:
        rows = files.read_rows(file, data)
    except files.FileError as e:
        raise click.ClickException('%s: %s' % (file, e))
    valid, errors = files.validate_rows(rows)
    if errors and not skip_invalid:
        click.echo('%s: %d invalid row(s); nothing was imported (use --skip-invalid to '
                   'import the %d valid ones):\n%s'
                   % (file, len({e['line'] for e in errors}), len(valid),
                      files.format_errors(errors)), err=True)
        sys.exit(1)
    import hashlib
    source = 'sha256:' + hashlib.sha256(data).hexdigest()
    store = _store()
    with click.progressbar(length=len(valid), label='importing', file=sys.stderr) as bar:
        counts, write_errors = import_valid(store, valid, source, bar.update)
    click.echo('imported %d car(s) from %s (%d new ids assigned, %d already imported '
               'before)' % (counts['written'], file, counts['created'],
                           counts['already_created']))
    all_errors = sorted(errors + write_errors, key=lambda e: e['line'] or 0)
    if all_errors:
        click.echo('skipped %d row(s):\n%s' % (len({e['line'] for e in all_errors}),
                                               files.format_errors(all_errors)), err=True)
    if write_errors:
        sys.exit(1)


@cli.command()
@click.argument('file', type=click.Path(dir_okay=False, writable=True))
def export(file):
    """Write every car to FILE: CSV with a header row, or JSON Lines (.jsonl)."""
    try:
        fmt = files.file_format(file)
    except files.FileError as e:
        raise click.ClickException(str(e))
    store = _store()
    records = []
    with click.progressbar(all_cars(store), label='reading',
                           file=sys.stderr) as bar:
        records.extend(bar)
    # Written to a temporary file and renamed, so a failure leaves no half file.
    tmp = file + '.tmp'
    with open(tmp, 'w', encoding='utf-8', newline='') as out:
        files.write_rows(out, records, fmt)
    os.replace(tmp, file)
    click.echo('exported %d car(s) to %s' % (len(records), file))


# --- seed -----------------------------------------------------------------------------------

MODELS = {
    'Toyota': ['Corolla', 'Camry', 'RAV4', 'Prius', 'Yaris', 'Hilux'],
    'Honda': ['Civic', 'Accord', 'CR-V', 'Jazz', 'Pilot'],
    'Ford': ['Focus', 'Fiesta', 'Mustang', 'F-150', 'Explorer'],
    'Volkswagen': ['Golf', 'Polo', 'Passat', 'Tiguan', 'Beetle'],
    'BMW': ['3 Series', '5 Series', 'X3', 'X5', 'i3'],
    'Mercedes-Benz': ['C-Class', 'E-Class', 'GLC', 'A-Class'],
    'Nissan': ['Leaf', 'Micra', 'Qashqai', 'Altima'],
    'Hyundai': ['i30', 'Elantra', 'Tucson', 'Kona'],
    'Kia': ['Rio', 'Ceed', 'Sportage', 'Niro'],
    'Tesla': ['Model 3', 'Model S', 'Model Y'],
    'Subaru': ['Impreza', 'Outback', 'Forester'],
    'Mazda': ['Mazda3', 'CX-5', 'MX-5'],
}
COLORS = ['black', 'white', 'silver', 'grey', 'blue', 'red', 'green', 'yellow', 'brown', None]
TRANS = ['automatic', 'manual', None]


def fake_car(rng):
    make = rng.choice(sorted(MODELS))
    return {'make': make, 'model': rng.choice(MODELS[make]),
            'year': rng.randint(1995, cars.year_max() - 1),
            'trans': rng.choice(TRANS), 'color': rng.choice(COLORS)}


@cli.command()
@click.argument('n', type=click.IntRange(1, cars.ID_SPACE))
@click.option('--random-seed', type=int, help='Make the cars reproducible.')
def seed(n, random_seed):
    """Create N realistic fake cars with server-assigned ids."""
    rng = random.Random(random_seed)
    store = _store()
    made = 0
    try:
        with click.progressbar(range(n), label='seeding', file=sys.stderr) as bar:
            for _ in bar:
                store.create(fake_car(rng))
                made += 1
    except cars.IdSpaceExhausted as e:
        raise click.ClickException('created %d car(s), then: %s' % (made, e))
    click.echo('created %d car(s)' % made)


# --- copy -----------------------------------------------------------------------------------

@cli.command()
@click.option('--from', 'source', type=click.Choice(config.STORES), required=True)
@click.option('--to', 'target', type=click.Choice(config.STORES), required=True)
@click.option('--batch', type=click.IntRange(1, 5000), default=WRITE_BATCH,
              show_default=True)
def copy(source, target, batch):
    """Copy every car from one store to the other (create or replace by id).

    E.g. `copy --from sqlite --to dynamodb` moves a local inventory to the
    table CARS_TABLE names. Cars already in the target with other ids stay.
    Safe to run again after an interruption: a copied car is replaced, not doubled.
    """
    if source == target:
        raise click.ClickException('--from and --to name the same store')
    src, dst = _store(source), _store(target)
    records = list(all_cars(src))
    with click.progressbar(length=len(records), label='copying', file=sys.stderr) as bar:
        for start in range(0, len(records), batch):
            chunk = records[start:start + batch]
            try:
                dst.put_many([{k: r.get(k) for k in files.COLUMNS} for r in chunk])
            except WriteIncomplete as e:
                raise click.ClickException(
                    'stopped after %d car(s): %s; not written: %s. Run the same copy again '
                    'to finish it.' % (start + e.written, e.reason, ', '.join(e.unwritten)))
            bar.update(len(chunk))
    click.echo('copied %d car(s) from %s to %s' % (len(records), source, target))


# --- events ----------------------------------------------------------------------------------

@cli.command('events')
@click.option('--follow', '-f', is_flag=True, help='Keep printing new events as they happen.')
@click.option('--after', type=int, default=0, help='Start after this outbox sequence number.')
@click.option('--interval', type=float, default=1.0, help='Seconds between polls with --follow.')
def events_(follow, after, interval):
    """Print the change events of the local (sqlite) store, one JSON object a line.

    Deployed, the same events go from the DynamoDB stream to the SNS topic
    CARS_EVENTS_TOPIC_ARN instead.
    """
    import json
    if config.store_kind() != 'sqlite':
        raise click.ClickException('the event outbox is kept by the sqlite store; deployed, '
                                   'events are published to the SNS topic '
                                   'CARS_EVENTS_TOPIC_ARN')
    store = _store('sqlite')
    seq = after
    try:
        while True:
            batch = store.changes_after(seq)
            for seq, event in batch:
                click.echo(json.dumps(dict(event, seq=seq), ensure_ascii=False))
            if batch:
                continue
            if not follow:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        return


def main():
    observability.configure_local_logging()
    cli(prog_name='python -m chalicelib.cli')


if __name__ == '__main__':
    main()
