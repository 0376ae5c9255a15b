<?php
/**
 * nPanel WHMCS server module: what the module functions in npanel.php share (settings checks,
 * the masked module log, the last job of a service).
 */

namespace WHMCS\Module\Server\Npanel;

use WHMCS\Database\Capsule;

if (!defined('WHMCS')) {
    die('This file cannot be accessed directly');
}

class Module
{
    const NAME = 'npanel';
    /** The module's own table: the last nPanel job of each service (for the admin tab). */
    const JOBS_TABLE = 'mod_npanel_jobs';

    /**
     * Every value logModuleCall must mask: the key's secret, the service's password, and their
     * JSON-escaped forms (the request body is logged as the JSON that was sent).
     */
    public static function sensitive(array $params, array $extra = [])
    {
        $vals = array_merge([
            $params['serverpassword'] ?? '',
            $params['serveraccesshash'] ?? '',
            $params['password'] ?? '',
        ], $extra);
        $out = [];
        foreach ($vals as $v) {
            if (!is_scalar($v)) {
                continue;
            }
            $v = (string) $v;
            if ($v === '') {
                continue;
            }
            $out[] = $v;
            foreach ([JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE, 0] as $flags) {
                $j = json_encode($v, $flags);
                if (is_string($j)) {
                    $j = substr($j, 1, -1);
                    if ($j !== '' && $j !== $v) {
                        $out[] = $j;
                    }
                }
            }
        }
        return array_values(array_unique($out));
    }

    /**
     * logModuleCall with the secret and passwords in its replace-vars argument. $request never
     * holds the secret (only the key id, the URL and the body sent).
     */
    public static function log($function, $request, $response, $processed, array $params, array $extra = [])
    {
        if (!function_exists('logModuleCall')) {
            return;
        }
        logModuleCall(self::NAME, $function, $request, $response, $processed, self::sensitive($params, $extra));
    }

    /** The code of a one-time login link (<panel>/login#code=<code>), or '' when $url has none. */
    public static function loginCode($url)
    {
        if (!is_string($url) || !preg_match('/#code=([A-Za-z0-9_-]+)$/', $url, $m)) {
            return '';
        }
        return $m[1];
    }

    /** $text with each of $values replaced by asterisks (before it is handed to the log at all). */
    public static function redact($text, array $values)
    {
        foreach ($values as $v) {
            if (is_string($v) && $v !== '') {
                $text = str_replace($v, '********', (string) $text);
            }
        }
        return $text;
    }

    /** The request as logged: method, URL, key id and the body sent (masked by log()). */
    public static function request(Api $api, Response $r)
    {
        $req = ['method' => $r->method, 'url' => $r->url, 'key_id' => $api->keyId()];
        if ($r->method === 'POST') {
            $req['body'] = $r->body;
        }
        return $req;
    }

    /** A sentence when the server record cannot sign requests; null when it can. */
    public static function serverProblem(array $params)
    {
        $host = trim((string) ($params['serverhostname'] ?? '')) !== '' ? true : trim((string) ($params['serverip'] ?? '')) !== '';
        if (!$host) {
            return 'The nPanel server in WHMCS has no hostname or IP address: set it under System Settings > Servers.';
        }
        if (trim((string) ($params['serverusername'] ?? '')) === '') {
            return 'The nPanel server in WHMCS has no API key id in its Username field: run "npanel whmcs key create" on the panel host and enter the key_id as Username and the secret as Password.';
        }
        if (trim((string) ($params['serverpassword'] ?? '')) === '') {
            return 'The nPanel server in WHMCS has no API secret in its Password field: enter the secret that "npanel whmcs key create" printed (or rotate the key to get a new one).';
        }
        return null;
    }

    /** The service's nPanel account (its WHMCS username). */
    public static function account(array $params)
    {
        return trim((string) ($params['username'] ?? ''));
    }

    /** The nPanel package: a configurable option "nPanel package", else the product's configoption1. */
    public static function package(array $params)
    {
        $opts = $params['configoptions'] ?? [];
        if (is_array($opts) && isset($opts['nPanel package']) && trim((string) $opts['nPanel package']) !== '') {
            return trim((string) $opts['nPanel package']);
        }
        return trim((string) ($params['configoption1'] ?? ''));
    }

    public static function serviceId(array $params)
    {
        return (int) ($params['serviceid'] ?? 0);
    }

    /**
     * One mutating call: check the settings, POST $fields to $path, remember the job, log.
     * Returns [string outcome ('success' or a sentence), Response|null].
     */
    public static function mutate(array $params, $function, $path, array $fields, $action)
    {
        $api = null;
        $r = null;
        try {
            $problem = self::serverProblem($params);
            if ($problem === null && self::account($params) === '' && $path !== '/api/whmcs/create-account') {
                $problem = 'The service has no username, so the module does not know its nPanel account: set the service\'s Username to the account name and retry.';
            }
            if ($problem !== null) {
                self::log($function, ['path' => $path], '', $problem, $params);
                return [$problem, null];
            }
            $api = Api::fromParams($params);
            $r = $api->post($path, $fields);
            $out = $api->outcome($action, $r);
            self::rememberJob($params, $function, $r, $out);
            self::log($function, self::request($api, $r), $r->forLog(), $out, $params);
            return [$out, $r];
        } catch (\Throwable $e) {
            $out = 'Could not ' . $action . ' on nPanel: the module failed unexpectedly (' . $e->getMessage() . '); report this to the module\'s maintainer.';
            self::log($function, $api && $r ? self::request($api, $r) : ['path' => $path], $e->getMessage(), $out, $params);
            return [$out, $r];
        }
    }

    /** Record the job nPanel named for this service (never fails the action). */
    public static function rememberJob(array $params, $function, Response $r, $outcome)
    {
        $job = $r->field('job_id');
        $sid = self::serviceId($params);
        if (!is_string($job) || $job === '' || $sid <= 0) {
            return;
        }
        try {
            self::ensureJobsTable();
            Capsule::table(self::JOBS_TABLE)->updateOrInsert(
                ['service_id' => $sid],
                [
                    'action' => substr($function, strlen(self::NAME) + 1),
                    'job_id' => $job,
                    'outcome' => $r->status() !== '' ? $r->status() : 'error',
                    'message' => substr((string) $outcome, 0, 1000),
                    'updated_at' => date('Y-m-d H:i:s'),
                ]
            );
        } catch (\Throwable $e) {
            self::log($function . ' (job record)', ['table' => self::JOBS_TABLE], $e->getMessage(), 'not recorded', $params);
        }
    }

    /** The last job recorded for a service, as an array, or null. */
    public static function lastJob($sid)
    {
        try {
            if (!Capsule::schema()->hasTable(self::JOBS_TABLE)) {
                return null;
            }
            $row = Capsule::table(self::JOBS_TABLE)->where('service_id', (int) $sid)->first();
            return $row ? (array) $row : null;
        } catch (\Throwable $e) {
            return null;
        }
    }

    private static function ensureJobsTable()
    {
        $schema = Capsule::schema();
        if ($schema->hasTable(self::JOBS_TABLE)) {
            return;
        }
        $schema->create(self::JOBS_TABLE, function ($table) {
            $table->unsignedInteger('service_id')->primary();
            $table->string('action', 32);
            $table->string('job_id', 64);
            $table->string('outcome', 16);
            $table->text('message');
            $table->dateTime('updated_at');
        });
    }

    /** An RFC 3339 time as WHMCS stores dates ('Y-m-d H:i:s', the WHMCS server's zone). */
    public static function whmcsDate($rfc3339)
    {
        $t = is_string($rfc3339) ? strtotime($rfc3339) : false;
        return $t ? date('Y-m-d H:i:s', $t) : '';
    }

    public static function h($s)
    {
        return htmlspecialchars((string) $s, ENT_QUOTES, 'UTF-8');
    }
}
