"""The test project's app: an Order model and the tasks its views would enqueue."""
