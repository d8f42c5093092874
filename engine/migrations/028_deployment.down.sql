DROP TABLE engine_members;
DROP TABLE engine_deployment;
