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

import resources  # noqa: E402 - deploy/ is not a package


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--stage', required=True, choices=sorted(resources.STAGES))
    parser.add_argument('out', help='output directory')
    args = parser.parse_args(argv)

    env = dict(os.environ)
    # The stage's variables, as the deployed functions will see them, for the
    # import of app.py that `chalice package` (and api_paths) do: auth.py
    # attaches the API Gateway authorizer when a token parameter is named.
    env['CARS_AUTH_SSM_PARAMETER'] = resources.auth_parameter_name(args.stage)
    env.setdefault('AWS_DEFAULT_REGION', 'us-east-1')
    for name in ('CARS_STORE', 'CARS_AUTH_TOKENS', 'CARS_BUCKET'):
        env.pop(name, None)
    os.environ.update(env)
    for name in ('CARS_STORE', 'CARS_AUTH_TOKENS', 'CARS_BUCKET'):
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
    print('packaged stage %s: %s' % (args.stage, os.path.join(args.out, 'sam.json')))


if __name__ == '__main__':
    main()
