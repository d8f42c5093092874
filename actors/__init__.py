"""The Ray actors: Ingestor, UserShard, ChannelShard, Recorder."""
