"""Package one stage for CloudFormation: `chalice package` with our resources merged in.

    python deploy/package.py --stage prod out/

writes out/sam.json (the template), out/deployment.zip (the code) and
out/resources.json (the merge template, from deploy/resources.py). Needs no
AWS account: nothing here talks to AWS.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import release_template  # noqa: E402
import resources  # noqa: E402 - deploy/ is not a package

# The functions run python3.13 on arm64 (.chalice/config.json sets the
# architecture). Chalice takes the runtime from the interpreter that packages
# and picks the wheels it bundles for it, so only 3.13 may package.
RUNTIME = (3, 13)
WRONG_PYTHON = (
    'deploy/package.py: the functions run Python {want}, but this is Python {have} ({exe}),\n'
    'so Chalice would package them for python{have_short}. Get Python {want}\n'
    '(`pyenv install {want}`, or a python{want} on PATH), then rebuild the venv:\n'
    '    make clean && make')


# The caller's local settings are not the stage's: app.py reads them when
# `chalice package` imports it, so they are kept out of that import (the
# import rule's pattern, for one, names the placeholder bucket).
CALLERS_ONLY = ('CARS_STORE', 'CARS_AUTH_TOKENS', 'CARS_BUCKET')


def check_interpreter(version=None, executable=None):
    """None when `version` (default: this interpreter's) may package, else why not."""
    version = tuple((version or sys.version_info)[:3])
    if version[:2] == RUNTIME:
        return None
    return WRONG_PYTHON.format(want='%d.%d' % RUNTIME, have='.'.join(map(str, version)),
                               have_short='%d.%d' % version[:2],
                               exe=executable or sys.executable)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--stage', required=True, choices=sorted(resources.STAGES))
    parser.add_argument('out', help='output directory')
    args = parser.parse_args(argv)
    wrong = check_interpreter()
    if wrong:
        print(wrong, file=sys.stderr)
        return 2

    env = dict(os.environ)
    # The stage's variables, as the deployed functions will see them, for the
    # import of app.py that `chalice package` (and api_paths) do: auth.py
    # attaches the API Gateway authorizer when a token parameter is named.
    env['CARS_AUTH_SSM_PARAMETER'] = resources.auth_parameter_name(args.stage)
    env.setdefault('AWS_DEFAULT_REGION', 'us-east-1')
    for name in CALLERS_ONLY:
        env.pop(name, None)
    os.environ.update(env)
    for name in CALLERS_ONLY:
        os.environ.pop(name, None)

    os.makedirs(args.out, exist_ok=True)
    merge = os.path.join(args.out, 'resources.json')
    with open(merge, 'w') as f:
        json.dump(resources.build(args.stage), f, indent=2, sort_keys=True)
        f.write('\n')
    chalice = os.path.join(os.path.dirname(sys.executable), 'chalice')
    cmd = [chalice, '--project-dir', resources.ROOT, 'package', '--stage', args.stage,
           '--merge-template', os.path.abspath(merge), os.path.abspath(args.out)]
    subprocess.run(cmd, check=True, env=env)
    # Chalice points the API, the authorizer and their invoke permissions at
    # the bare functions ($LATEST); every invoker goes through the live alias.
    sam = os.path.join(args.out, 'sam.json')
    with open(sam) as f:
        template = json.load(f)
    with open(sam, 'w') as f:
        json.dump(release_template.point_invokers_at_aliases(template), f, indent=2)
        f.write('\n')
    print('packaged stage %s: %s' % (args.stage, os.path.join(args.out, 'sam.json')))


if __name__ == '__main__':
    sys.exit(main())
