-- 0004: the withdrawal's W3C trace context (its submission's span), so that every
-- step, timer and webhook, in whatever process, is traced as part of it.
ALTER TABLE order_queues ADD COLUMN traceparent text;
