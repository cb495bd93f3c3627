"""Both stages packaged once per test session, as `make package` does, and
run through the SAM transform as CloudFormation runs it (deploy/translate.py).

The template, policy, monitoring and sandbox tests all read these, so the
slow part (chalice package fetching the runtime's wheels) runs once. The
packaging process gets no AWS credentials and every AWS endpoint points at a
closed port: packaging must not need AWS. It still reaches PyPI through pip.
"""
import json
import os
import pathlib
import subprocess
import sys
from dataclasses import dataclass

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ('dev', 'prod')


@dataclass
class Packaged:
    out: pathlib.Path        # the folder `deploy/package.py` wrote
    sam_path: pathlib.Path   # the SAM template (sam.json)
    sam: dict
    cfn_path: pathlib.Path   # the translated CloudFormation template (cfn.json)
    cfn: dict
    zip_path: pathlib.Path   # deployment.zip


def offline_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(('AWS_', 'CARS_'))}
    env.update(AWS_DEFAULT_REGION='us-east-1', AWS_EC2_METADATA_DISABLED='true',
               AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
               AWS_ENDPOINT_URL='http://127.0.0.1:9')
    return env


@pytest.fixture(scope='session')
def packaged_stages(tmp_path_factory):
    """{stage: Packaged} for dev and prod."""
    sys.path.insert(0, os.path.join(ROOT, 'deploy'))
    try:
        import translate
    finally:
        sys.path.remove(os.path.join(ROOT, 'deploy'))
    out = {}
    for stage in STAGES:
        target = tmp_path_factory.mktemp('package-%s' % stage)
        subprocess.run([sys.executable, os.path.join(ROOT, 'deploy', 'package.py'),
                        '--stage', stage, str(target)], env=offline_env(), check=True,
                       cwd=ROOT, capture_output=True, timeout=600)
        with open(target / 'sam.json') as f:
            sam = json.load(f)
        cfn = translate.translate(sam)
        with open(target / 'cfn.json', 'w') as f:
            json.dump(cfn, f, indent=2)
        out[stage] = Packaged(target, target / 'sam.json', sam, target / 'cfn.json', cfn,
                              target / 'deployment.zip')
    return out
