"""The SAM transform, offline, as CloudFormation applies it at deploy time.

    python deploy/translate.py out/prod/sam.json out/prod/cfn.json

It runs aws-sam-translator, the library CloudFormation itself expands `chalice
package`'s SAM template with, so its output is what the stack will contain.
"""
import argparse
import json
import os
import sys


class _NoManagedPolicies(object):
    """The templates attach no AWS managed policy by name (every role's policy
    is written out), so the translator never needs IAM to look one up."""

    def load(self):
        return {}


def uploaded(template, bucket='artifacts', key='deployment.zip'):
    """`template` as `aws cloudformation package` leaves it: local CodeUri paths
    replaced by the S3 location of the uploaded code (CloudFormation itself
    only accepts S3 locations)."""
    out = json.loads(json.dumps(template))
    for resource in out.get('Resources', {}).values():
        props = resource.get('Properties') or {}
        code = props.get('CodeUri')
        if resource.get('Type') == 'AWS::Serverless::Function' and isinstance(code, str) \
                and not code.startswith('s3://'):
            props['CodeUri'] = 's3://%s/%s' % (bucket, key)
    return out


def translate(template, region='us-east-1', parameters=None):
    """The CloudFormation template CloudFormation would make of `template`
    (local code paths are taken as uploaded, see `uploaded`)."""
    # The translator reads the region from boto3's session default; it must
    # not depend on the caller's AWS profile or talk to AWS.
    os.environ.setdefault('AWS_DEFAULT_REGION', region)
    from samtranslator.translator.transform import transform
    values = {'AWS::Region': region, 'AWS::Partition': 'aws',
              'AWS::AccountId': '123456789012'}
    values.update(parameters or {})
    return transform(uploaded(template), values, _NoManagedPolicies())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('sam', help='the SAM template (chalice package output)')
    parser.add_argument('out', help='where to write the CloudFormation template')
    parser.add_argument('--region', default=os.environ.get('AWS_DEFAULT_REGION', 'us-east-1'))
    args = parser.parse_args(argv)
    with open(args.sam) as f:
        template = json.load(f)
    result = translate(template, args.region)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=2, sort_keys=True)
        f.write('\n')
    print('translated %s: %d resources' % (args.out, len(result['Resources'])))


if __name__ == '__main__':
    sys.exit(main())
