DROP TABLE engine_deployment;
