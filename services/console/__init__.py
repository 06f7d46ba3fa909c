"""The operator's console: a web frontend over settlement's and the matcher's gRPC APIs."""
