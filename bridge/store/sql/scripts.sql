-- Reply scripts registered through the admin API.

-- name: list_reply_scripts
SELECT id, shortcode, keyword, url, method, timeout, secret, created_at, updated_at
FROM reply_scripts ORDER BY id

-- name: insert_reply_script
INSERT INTO reply_scripts (shortcode, keyword, url, method, timeout, secret, created_at,
                           updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
RETURNING id, shortcode, keyword, url, method, timeout, secret, created_at, updated_at

-- name: update_reply_script
UPDATE reply_scripts SET shortcode = ?, keyword = ?, url = ?, method = ?, timeout = ?,
                         secret = ?, updated_at = ?
WHERE id = ?
RETURNING id, shortcode, keyword, url, method, timeout, secret, created_at, updated_at

-- name: delete_reply_script
DELETE FROM reply_scripts WHERE id = ?
