"""Cold-start cost of the validation library: msgspec against pydantic v2.

Each sample is a fresh interpreter (as a Lambda cold start is) that imports
`chalice.app` first, then the library, then defines the car type. Prints the
median of RUNS samples in milliseconds.

    .venv/bin/python bench/validation_import.py [RUNS]
"""
import statistics
import subprocess
import sys

PRELUDE = 'import time; t0 = time.perf_counter(); import chalice.app; t1 = time.perf_counter()\n'
EPILOGUE = 't2 = time.perf_counter(); print((t1 - t0) * 1000, (t2 - t1) * 1000)\n'

CASES = {
    'msgspec': '''
from typing import Annotated, Optional, Union
import msgspec
Text = Annotated[str, msgspec.Meta(pattern=r'^\\s*\\S(?:.{0,62}\\S)?\\s*$')]
class Car(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    id: Annotated[str, msgspec.Meta(pattern='^[1-9]{4}$')] = None
    make: Text
    model: Text
    year: Union[Annotated[int, msgspec.Meta(ge=1886, le=2027)], str]
    trans: Optional[str] = None
    color: Optional[str] = None
msgspec.convert({'make': 'a', 'model': 'b', 'year': 2000}, Car)
''',
    'pydantic': '''
from typing import Annotated, Optional, Union
import pydantic
Text = Annotated[str, pydantic.StringConstraints(pattern=r'^\\s*\\S(?:.{0,62}\\S)?\\s*$')]
class Car(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra='forbid', strict=True)
    id: Optional[Annotated[str, pydantic.StringConstraints(pattern='^[1-9]{4}$')]] = None
    make: Text
    model: Text
    year: Union[Annotated[int, pydantic.Field(ge=1886, le=2027)], str]
    trans: Optional[str] = None
    color: Optional[str] = None
Car.model_validate({'make': 'a', 'model': 'b', 'year': 2000})
''',
}


def sample(code):
    out = subprocess.run([sys.executable, '-c', PRELUDE + code + EPILOGUE],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None
    chalice_ms, lib_ms = map(float, out.stdout.split())
    return chalice_ms, lib_ms


def main(runs=15):
    print('%-10s %14s %22s' % ('library', 'chalice.app ms', 'import + define ms'))
    for name, code in CASES.items():
        samples = [sample(code) for _ in range(runs)]
        if None in samples:
            print('%-10s not installed' % name)
            continue
        print('%-10s %14.1f %22.1f' % (name, statistics.median(s[0] for s in samples),
                                       statistics.median(s[1] for s in samples)))


if __name__ == '__main__':
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
