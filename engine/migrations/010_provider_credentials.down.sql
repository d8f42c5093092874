DROP TABLE IF EXISTS provider_credentials;
