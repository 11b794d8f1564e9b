"""Operations: the local cluster (Kafka + Redis + processors) and the ``lukhas`` command."""
