-- Migration 4: the per-chat settings are typed and checked in the log itself (issue 9). They
-- used to take anything: `memory_max = '512M'` failed every later turn of the chat, a
-- misspelt permission mode refused them all. picortexctl / org.picortex.Gateway1 and the owner's
-- /picortex commands set them through the rules in picortexd/src/limits.rs; the triggers below
-- refuse, with the valid range, what the same rules refuse, for anyone writing SQL by hand. The
-- ranges are limits.rs's (a unit test in store/mod.rs holds the two together).

-- What was stored before is converted where it has a meaning and dropped (back to the
-- configured default) where it has none.
UPDATE chats SET memory_max =
  CASE
    WHEN typeof(memory_max) = 'integer' THEN memory_max
    WHEN typeof(memory_max) = 'text' AND upper(trim(memory_max)) GLOB '[0-9]*[KMGT]'
         AND substr(trim(memory_max), 1, length(trim(memory_max)) - 1) NOT GLOB '*[^0-9]*'
      THEN CAST(substr(trim(memory_max), 1, length(trim(memory_max)) - 1) AS INTEGER)
           * CASE upper(substr(trim(memory_max), -1))
               WHEN 'K' THEN 1024 WHEN 'M' THEN 1048576 WHEN 'G' THEN 1073741824 ELSE 1099511627776 END
    ELSE NULL
  END
  WHERE memory_max IS NOT NULL;
UPDATE chats SET memory_max = NULL
  WHERE memory_max IS NOT NULL AND memory_max NOT BETWEEN 33554432 AND 68719476736;

UPDATE chats SET attention = lower(trim(attention)) WHERE attention IS NOT NULL;
UPDATE chats SET attention = NULL
  WHERE attention NOT IN ('always', 'mentions-only', 'discriminate', 'discriminate-quiet', 'silent');

UPDATE chats SET permission_mode =
  CASE lower(trim(permission_mode))
    WHEN 'default' THEN 'default' WHEN 'acceptedits' THEN 'acceptEdits' WHEN 'plan' THEN 'plan'
    WHEN 'auto' THEN 'auto' WHEN 'dontask' THEN 'dontAsk' WHEN 'bypasspermissions' THEN 'bypassPermissions'
  END
  WHERE permission_mode IS NOT NULL;

UPDATE chats SET daily_budget_usd = NULL
  WHERE daily_budget_usd IS NOT NULL
    AND (typeof(daily_budget_usd) NOT IN ('integer', 'real') OR daily_budget_usd NOT BETWEEN 0 AND 10000);

-- From now on a bad value is refused where it is written, saying what would do.
CREATE TRIGGER chats_memory_max_insert BEFORE INSERT ON chats
  WHEN NEW.memory_max IS NOT NULL
   AND (typeof(NEW.memory_max) != 'integer' OR NEW.memory_max NOT BETWEEN 33554432 AND 68719476736)
  BEGIN SELECT RAISE(ABORT, 'chats.memory_max is bytes between 32M (33554432) and 64G (68719476736), or NULL for the default: use picortexctl set CHAT memory=512M'); END;
CREATE TRIGGER chats_memory_max_update BEFORE UPDATE OF memory_max ON chats
  WHEN NEW.memory_max IS NOT NULL
   AND (typeof(NEW.memory_max) != 'integer' OR NEW.memory_max NOT BETWEEN 33554432 AND 68719476736)
  BEGIN SELECT RAISE(ABORT, 'chats.memory_max is bytes between 32M (33554432) and 64G (68719476736), or NULL for the default: use picortexctl set CHAT memory=512M'); END;

CREATE TRIGGER chats_attention_insert BEFORE INSERT ON chats
  WHEN NEW.attention IS NOT NULL
   AND NEW.attention NOT IN ('always', 'mentions-only', 'discriminate', 'discriminate-quiet', 'silent')
  BEGIN SELECT RAISE(ABORT, 'chats.attention is one of always, mentions-only, discriminate, discriminate-quiet, silent, or NULL for the default: use picortexctl set CHAT attention=always'); END;
CREATE TRIGGER chats_attention_update BEFORE UPDATE OF attention ON chats
  WHEN NEW.attention IS NOT NULL
   AND NEW.attention NOT IN ('always', 'mentions-only', 'discriminate', 'discriminate-quiet', 'silent')
  BEGIN SELECT RAISE(ABORT, 'chats.attention is one of always, mentions-only, discriminate, discriminate-quiet, silent, or NULL for the default: use picortexctl set CHAT attention=always'); END;

CREATE TRIGGER chats_permission_mode_insert BEFORE INSERT ON chats
  WHEN NEW.permission_mode IS NOT NULL
   AND NEW.permission_mode NOT IN ('default', 'acceptEdits', 'plan', 'auto', 'dontAsk', 'bypassPermissions')
  BEGIN SELECT RAISE(ABORT, 'chats.permission_mode is one of default, acceptEdits, plan, auto, dontAsk, bypassPermissions, or NULL for the default: use picortexctl set CHAT permission=plan'); END;
CREATE TRIGGER chats_permission_mode_update BEFORE UPDATE OF permission_mode ON chats
  WHEN NEW.permission_mode IS NOT NULL
   AND NEW.permission_mode NOT IN ('default', 'acceptEdits', 'plan', 'auto', 'dontAsk', 'bypassPermissions')
  BEGIN SELECT RAISE(ABORT, 'chats.permission_mode is one of default, acceptEdits, plan, auto, dontAsk, bypassPermissions, or NULL for the default: use picortexctl set CHAT permission=plan'); END;

CREATE TRIGGER chats_daily_budget_insert BEFORE INSERT ON chats
  WHEN NEW.daily_budget_usd IS NOT NULL
   AND (typeof(NEW.daily_budget_usd) NOT IN ('integer', 'real') OR NEW.daily_budget_usd NOT BETWEEN 0 AND 10000)
  BEGIN SELECT RAISE(ABORT, 'chats.daily_budget_usd is USD between 0 and 10000, or NULL for the default: use picortexctl set CHAT budget=5'); END;
CREATE TRIGGER chats_daily_budget_update BEFORE UPDATE OF daily_budget_usd ON chats
  WHEN NEW.daily_budget_usd IS NOT NULL
   AND (typeof(NEW.daily_budget_usd) NOT IN ('integer', 'real') OR NEW.daily_budget_usd NOT BETWEEN 0 AND 10000)
  BEGIN SELECT RAISE(ABORT, 'chats.daily_budget_usd is USD between 0 and 10000, or NULL for the default: use picortexctl set CHAT budget=5'); END;
