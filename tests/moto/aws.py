#!/usr/bin/env python3
"""What the `aws` tests do to the emulator besides dmf's own calls, with boto3.

  aws.py ENDPOINT seed [SOURCE:on|off[:aurora] ...]
      a VPC with two subnets and a security group, and per SOURCE an RDS for PostgreSQL 15
      instance whose parameter group has rds.logical_replication = 1 (on) or unset (off); with
      `:aurora`, an Aurora PostgreSQL cluster SOURCE (the parameter in its cluster parameter
      group) with one instance, SOURCE-1;
      prints {"subnets": [...], "security_group": "..."}
  aws.py ENDPOINT create-secret NAME
      a Secrets Manager secret NAME whose SecretString is read from stdin; prints {"arn": "..."}
  aws.py ENDPOINT inventory
      prints what exists: RDS clusters (with members), instances, cluster parameter groups and
      subnet groups; DMS endpoints, replication instances and tasks
"""
import json
import sys

import boto3


def client(endpoint, service):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def seed(endpoint, sources):
    ec2 = client(endpoint, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{i}.0/24", AvailabilityZone=f"us-east-1{zone}")["Subnet"]["SubnetId"]
        for i, zone in enumerate("ab")
    ]
    sg = ec2.create_security_group(GroupName="dmf-test", Description="dmf test", VpcId=vpc)["GroupId"]
    rds = client(endpoint, "rds")
    for spec in sources:
        name, logical, *kind = spec.split(":")
        group = f"{name}-params"
        if kind == ["aurora"]:
            rds.create_db_cluster_parameter_group(DBClusterParameterGroupName=group, DBParameterGroupFamily="aurora-postgresql15",
                                                  Description="test source")
            if logical == "on":
                rds.modify_db_cluster_parameter_group(DBClusterParameterGroupName=group, Parameters=[
                    {"ParameterName": "rds.logical_replication", "ParameterValue": "1", "ApplyMethod": "pending-reboot"}])
            rds.create_db_cluster(DBClusterIdentifier=name, Engine="aurora-postgresql", EngineVersion="15.4",
                                  MasterUsername="postgres", MasterUserPassword="secret-secret", DBClusterParameterGroupName=group)
            rds.create_db_instance(DBInstanceIdentifier=f"{name}-1", DBClusterIdentifier=name, Engine="aurora-postgresql",
                                   DBInstanceClass="db.r6g.large")
            continue
        rds.create_db_parameter_group(DBParameterGroupName=group, DBParameterGroupFamily="postgres15", Description="test source")
        if logical == "on":
            rds.modify_db_parameter_group(DBParameterGroupName=group, Parameters=[
                {"ParameterName": "rds.logical_replication", "ParameterValue": "1", "ApplyMethod": "pending-reboot"}])
        rds.create_db_instance(DBInstanceIdentifier=name, DBInstanceClass="db.m6g.large", Engine="postgres",
                               EngineVersion="15.4", MasterUsername="postgres", MasterUserPassword="secret-secret",
                               AllocatedStorage=20, DBParameterGroupName=group)
    print(json.dumps({"subnets": subnets, "security_group": sg}))


def inventory(endpoint):
    rds = client(endpoint, "rds")
    dms = client(endpoint, "dms")
    out = {
        "clusters": {c["DBClusterIdentifier"]: {
            "status": c["Status"], "engine": c["Engine"], "parameter_group": c.get("DBClusterParameterGroup"),
            "subnet_group": c.get("DBSubnetGroup"), "endpoint": c.get("Endpoint"), "reader_endpoint": c.get("ReaderEndpoint"),
            "members": {m["DBInstanceIdentifier"]: m["IsClusterWriter"] for m in c.get("DBClusterMembers", [])},
        } for c in rds.describe_db_clusters()["DBClusters"]},
        "instances": {i["DBInstanceIdentifier"]: i.get("DBClusterIdentifier") for i in rds.describe_db_instances()["DBInstances"]},
        "cluster_parameter_groups": {
            g["DBClusterParameterGroupName"]: {
                p["ParameterName"]: p.get("ParameterValue")
                for p in rds.describe_db_cluster_parameters(DBClusterParameterGroupName=g["DBClusterParameterGroupName"])["Parameters"]
            }
            for g in rds.describe_db_cluster_parameter_groups()["DBClusterParameterGroups"]
        },
        "subnet_groups": [g["DBSubnetGroupName"] for g in rds.describe_db_subnet_groups()["DBSubnetGroups"]],
        "dms_endpoints": {e["EndpointIdentifier"]: {"type": e["EndpointType"], "engine": e["EngineName"], "server": e.get("ServerName")}
                          for e in dms.describe_endpoints()["Endpoints"]},
        "dms_instances": {i["ReplicationInstanceIdentifier"]: i["ReplicationInstanceStatus"]
                          for i in dms.describe_replication_instances()["ReplicationInstances"]},
        "dms_tasks": {t["ReplicationTaskIdentifier"]: {"status": t["Status"], "type": t["MigrationType"], "mappings": json.loads(t["TableMappings"])}
                      for t in dms.describe_replication_tasks()["ReplicationTasks"]},
    }
    print(json.dumps(out))


def create_secret(endpoint, name):
    arn = client(endpoint, "secretsmanager").create_secret(Name=name, SecretString=sys.stdin.read())["ARN"]
    print(json.dumps({"arn": arn}))


def main():
    endpoint, command, *rest = sys.argv[1:]
    if command == "seed":
        seed(endpoint, rest)
    elif command == "create-secret":
        create_secret(endpoint, rest[0])
    elif command == "inventory":
        inventory(endpoint)
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
