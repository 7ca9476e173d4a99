"""Retention: finished transactions, their notification deliveries and attempts leave the
database after ``EVENTDESK_TRANSACTION_RETENTION``; requests and notes stay."""
