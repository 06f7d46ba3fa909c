"""The household portal: accounts, sign-in, pairing meters, and the household app."""
