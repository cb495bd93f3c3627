"""DynamoDB Local starts and answers the DynamoDB API."""
import uuid

import boto3


def test_create_and_list_table(dynamodb_endpoint):
    client = boto3.client('dynamodb', endpoint_url=dynamodb_endpoint)
    name = 'scaffold-%s' % uuid.uuid4().hex[:8]
    client.create_table(
        TableName=name,
        AttributeDefinitions=[{'AttributeName': 'id', 'AttributeType': 'S'}],
        KeySchema=[{'AttributeName': 'id', 'KeyType': 'HASH'}],
        BillingMode='PAY_PER_REQUEST',
    )
    try:
        client.get_waiter('table_exists').wait(TableName=name, WaiterConfig={'Delay': 0.2, 'MaxAttempts': 50})
        assert name in client.list_tables()['TableNames']
        client.put_item(TableName=name, Item={'id': {'S': '1234'}, 'make': {'S': 'Toyota'}})
        item = client.get_item(TableName=name, Key={'id': {'S': '1234'}}, ConsistentRead=True)['Item']
        assert item['make'] == {'S': 'Toyota'}
    finally:
        client.delete_table(TableName=name)
