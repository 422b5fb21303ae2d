-- What each device was shown: the content's localization key that supplied the
-- text (`default` for the default title and body) and the title as filled in,
-- so a client can check localization per device. NULL where nothing was pushed.
ALTER TABLE deliveries ADD COLUMN content_locale text;
ALTER TABLE deliveries ADD COLUMN title text;
