"""The DynamoDB table definition, shared by `cli init`, the deployment template
and the tests, so the three cannot drift apart.

`table.json` holds the CloudFormation `AWS::DynamoDB::Table` properties; this
module turns them into the boto3 calls that create the same table.
"""
import json
import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def cloudformation_properties():
    with open(os.path.join(_HERE, 'table.json')) as f:
        return json.load(f)


def create_table(client, name, properties=None, wait=True):
    """Create `name` from CloudFormation properties; return False if it exists."""
    props = properties or cloudformation_properties()
    kwargs = {
        'TableName': name,
        'AttributeDefinitions': props['AttributeDefinitions'],
        'KeySchema': props['KeySchema'],
        'BillingMode': props.get('BillingMode', 'PAY_PER_REQUEST'),
    }
    if 'StreamSpecification' in props:
        kwargs['StreamSpecification'] = dict(StreamEnabled=True, **props['StreamSpecification'])
    if props.get('SSESpecification', {}).get('SSEEnabled'):
        kwargs['SSESpecification'] = {'Enabled': True}
    if props.get('GlobalSecondaryIndexes'):
        kwargs['GlobalSecondaryIndexes'] = props['GlobalSecondaryIndexes']
    try:
        client.create_table(**kwargs)
    except client.exceptions.ResourceInUseException:
        return False
    if wait:
        client.get_waiter('table_exists').wait(TableName=name, WaiterConfig={'Delay': 1})
    ttl = props.get('TimeToLiveSpecification')
    if ttl and ttl.get('Enabled'):
        client.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
    pitr = props.get('PointInTimeRecoverySpecification')
    if pitr and pitr.get('PointInTimeRecoveryEnabled'):
        try:
            client.update_continuous_backups(
                TableName=name, PointInTimeRecoverySpecification=pitr)
        except client.exceptions.ClientError:
            # DynamoDB Local does not implement backups; AWS does.
            pass
    return True
